"""The pool's in-memory harness: a fake clock and in-memory transports (StringTransport) for
ConnectionPool's policy tests (tests/test_pool.py, tests/test_pool_sessions.py)."""

import random

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from connscale.net.pool import ConnectionPool, PoolSettings
from connscale.net.routes import Route
from connscale.net.wheel import TimerWheel


class FakeTransport(StringTransport):
    def __init__(self, conn):
        super().__init__()
        self.conn = conn
        self.protocol = conn  # as connscale's transports: the factory finds the connection
        self.stopped = False

    def loseConnection(self):
        super().loseConnection()
        self.conn.connectionLost(Failure(error.ConnectionDone()))

    def stopConnecting(self):
        self.stopped = True
        self.conn.pool.factory.clientConnectionFailed(self, Failure(error.UserError()))


class Harness:
    def __init__(self, routes=None, auto_connect=True, immediate=False, **settings):
        self.immediate = immediate
        self.clock = Clock()
        self.clock.advance(1000)
        self.dialed = []
        self.auto_connect = auto_connect
        self.pool = ConnectionPool(
            None, self.clock, PoolSettings(**settings),
            routes or [Route(None, "127.0.0.1", 8989)],
            wheel=TimerWheel(self.clock, 0.01), rng=random.Random(1), dial=self.dial,
        )

    def dial(self, route, conn):
        t = FakeTransport(conn)
        self.dialed.append((route, conn, t))
        if self.immediate:
            conn.makeConnection(t)
        elif self.auto_connect:
            self.clock.callLater(0, lambda: conn.makeConnection(t))
        return t

    def run(self, seconds, step=0.01):
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)

    def answer_all(self):
        for _, conn, t in self.dialed:
            if t.value().endswith(b"Ping\n") and conn.sent_at:
                t.clear()
                conn.dataReceived(b"Pong\n")
