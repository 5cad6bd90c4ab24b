"""connscale's lean transports and event loop, over real sockets on loopback.

Each test turns its own epoll reactor by hand (tests/support/loop.py).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

import pytest
from twisted.internet import error
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from connscale.metrics.counters import Counters, classify
from connscale.net.connector import ClientTransport, DialTarget
from connscale.net.dispatch import Loop, loop_for
from connscale.net.port import ListeningPort
from connscale.net.server import PingServerFactory, bind_sockets, listen_on
from connscale.net.transport import ServerTransport
from tests.support.loop import spin, turns
from tests.support.procs import free_port


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None
        self.made = 0

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason


class Recording(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: object) -> Recorder:
        p = Recorder()
        p.factory = self
        self.built.append(p)
        return p


def serve(reactor, factory, fail=None):  # type: ignore[no-untyped-def]
    sock = bind_sockets("127.0.0.1", [0], 128)[0]
    port = listen_on(reactor, sock, factory, fail)
    return port, port.getHost().port


def peer_of(reactor, factory, port):  # type: ignore[no-untyped-def]
    """A plain blocking client socket connected to `port`, and the server's protocol for it."""
    before = len(factory.built)
    c = socket.create_connection(("127.0.0.1", port))
    spin(reactor, lambda: len(factory.built) > before, what="accept")
    return c, factory.built[-1]


def read_available(sock: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_the_lean_loop_is_installed_only_on_epoll_reactors(reactor) -> None:
    from twisted.internet.testing import MemoryReactor

    assert isinstance(loop_for(reactor), Loop)
    assert loop_for(reactor) is loop_for(reactor)
    assert loop_for(MemoryReactor()) is None


def test_accepted_connections_get_lean_transports_and_data_flows(reactor) -> None:
    factory = Recording()
    port, number = serve(reactor, factory)
    assert isinstance(port, ListeningPort)
    c, proto = peer_of(reactor, factory, number)
    assert isinstance(proto.transport, ServerTransport) and proto.made == 1
    c.sendall(b"hello")
    spin(reactor, lambda: proto.data == b"hello", what="data")
    proto.transport.write(b"world")
    assert c.recv(100) == b"world"
    peer = proto.transport.getPeer()
    assert (peer.host, peer.port) == c.getsockname()
    assert proto.transport.getHost().port == number
    c.close()
    spin(reactor, lambda: proto.lost is not None, what="connectionLost")
    assert proto.lost.check(error.ConnectionDone)
    assert proto.transport.disconnected and not proto.transport.connected


def fill_socket(fd: int) -> int:
    """Write until the kernel takes no more; returns how much it took."""
    total = 0
    while True:
        try:
            total += os.write(fd, b"x" * 65536)
        except BlockingIOError:
            return total


def test_a_partial_write_queues_the_rest_and_flushes_when_writable(reactor) -> None:
    factory = Recording()
    _, number = serve(reactor, factory)
    c, proto = peer_of(reactor, factory, number)
    t = proto.transport
    payload = bytes(range(256)) * 16384  # 4 MiB: more than the socket buffers hold
    t.write(payload)
    assert 0 < len(t.wbuf) < len(payload)  # the kernel took a part, the rest waits
    t.write(b"END")  # queued behind it, in order, no syscall
    got = b""

    def drained() -> bool:
        nonlocal got
        got += read_available(c)
        return len(got) == len(payload) + 3

    spin(reactor, drained, what="the peer reading everything")
    assert got == payload + b"END"
    assert t.wbuf == b"" and proto.lost is None


def test_eagain_on_the_first_write_queues_it_whole(reactor) -> None:
    factory = Recording()
    _, number = serve(reactor, factory)
    c, proto = peer_of(reactor, factory, number)
    t = proto.transport
    fill_socket(t.fd)  # the peer reads nothing: the socket is full
    t.write(b"ping")
    assert t.wbuf == b"ping"
    got = b""

    def drained() -> bool:
        nonlocal got
        got += read_available(c)
        return got.endswith(b"ping")

    spin(reactor, drained, what="the queued write after the backlog")
    assert t.wbuf == b""


def test_close_while_queued_flushes_first_and_drops_later_writes(reactor) -> None:
    factory = Recording()
    _, number = serve(reactor, factory)
    c, proto = peer_of(reactor, factory, number)
    t = proto.transport
    backlog = fill_socket(t.fd)
    t.write(b"last words")
    t.loseConnection()
    t.write(b"never sent")  # after loseConnection: dropped, as in Twisted
    assert t.disconnecting
    turns(reactor)
    assert proto.lost is None  # still flushing: the peer has not read yet
    got = b""

    def closed() -> bool:
        nonlocal got
        try:
            chunk = c.recv(1 << 20)
        except BlockingIOError:
            chunk = None
        if chunk:
            got += chunk
        reactor.runUntilCurrent()
        reactor.doIteration(0)
        return chunk == b""

    c.setblocking(False)
    spin(reactor, closed, what="EOF at the peer")
    assert got == b"x" * backlog + b"last words"
    assert proto.lost is not None and proto.lost.check(error.ConnectionDone)


def test_lose_connection_reports_after_the_callers_turn(reactor) -> None:
    factory = Recording()
    _, number = serve(reactor, factory)
    c, proto = peer_of(reactor, factory, number)
    proto.transport.loseConnection()
    assert proto.lost is None  # never re-entrant
    spin(reactor, lambda: proto.lost is not None)
    assert c.recv(10) == b""


def test_abort_resets_the_connection(reactor) -> None:
    factory = Recording()
    _, number = serve(reactor, factory)
    c, proto = peer_of(reactor, factory, number)
    proto.transport.write(b"a")
    proto.transport.abortConnection()
    spin(reactor, lambda: proto.lost is not None)
    assert proto.lost.check(error.ConnectionAborted)
    with pytest.raises(ConnectionResetError):
        c.recv(10)
        c.recv(10)


def test_a_reset_from_the_peer_is_a_lost_connection_with_its_errno(reactor) -> None:
    factory = Recording()
    _, number = serve(reactor, factory)
    c, proto = peer_of(reactor, factory, number)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
    spin(reactor, lambda: proto.lost is not None)
    assert proto.lost.check(error.ConnectionLost)
    assert classify(proto.lost) == "ECONNRESET"


def test_a_protocol_that_raises_loses_only_its_own_connection(reactor) -> None:
    class Broken(Recorder):
        def dataReceived(self, data: bytes) -> None:
            raise ZeroDivisionError("bug")

    class Mixed(Recording):
        def buildProtocol(self, addr: object) -> Recorder:
            p = Broken() if not self.built else Recorder()
            self.built.append(p)
            return p

    factory = Mixed()
    _, number = serve(reactor, factory)
    bad_peer, bad = peer_of(reactor, factory, number)
    good_peer, good = peer_of(reactor, factory, number)
    bad_peer.sendall(b"x")
    good_peer.sendall(b"y")
    spin(reactor, lambda: bad.lost is not None and good.data == b"y")
    assert bad.lost.check(ZeroDivisionError)
    assert good.lost is None
    assert bad_peer.recv(10) == b""


def test_twisted_selectables_share_the_loop(reactor) -> None:
    """A port of Twisted's own (here an echo server) works beside ours."""

    class Echo(Protocol):
        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    loop_for(reactor)  # ours is installed first
    twisted_port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    c = socket.create_connection(("127.0.0.1", twisted_port.getHost().port))
    c.setblocking(False)
    c.sendall(b"echo")
    got = b""

    def echoed() -> bool:
        nonlocal got
        got += read_available(c)
        return got == b"echo"

    spin(reactor, echoed, what="Twisted's own echo")
    c.close()
    twisted_port.stopListening()


def test_work_asked_for_outside_an_event_runs_before_the_next_wait(reactor) -> None:
    loop = loop_for(reactor)
    assert loop is not None
    done = []
    reactor.callLater(0, lambda: loop.soon(done.append, "x"))
    reactor.runUntilCurrent()  # the timer asks for work
    reactor.doIteration(60)  # must not block: the work runs first, the wait is skipped
    assert done == ["x"]


class Connector:
    """What a ClientTransport reports a failed connect to (a ClientFactory)."""

    def __init__(self) -> None:
        self.failed: list[Failure] = []

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.failed.append(reason)


def client_transport(reactor: EPollReactor) -> tuple[ClientTransport, Connector, Recorder]:
    """A lean client transport on the reactor's loop, not dialled yet, with the connector and
    protocol it reports to."""
    connector, proto = Connector(), Recorder()
    return ClientTransport(loop_for(reactor), proto, connector), connector, proto


def test_a_refused_connect_is_a_connect_error_with_its_errno(reactor) -> None:
    t, connector, proto = client_transport(reactor)
    t.dial(DialTarget("127.0.0.1", free_port(), "127.0.0.2"))  # nothing listens there
    assert connector.failed == []  # reported later, never inside connect()
    spin(reactor, lambda: connector.failed)
    (reason,) = connector.failed
    assert reason.check(error.ConnectError) and classify(reason) == "ECONNREFUSED"
    assert proto.made == 0 and t.fd == -1


def dialling(reactor, proto: Recorder, src: str | None = None):  # type: ignore[no-untyped-def]
    """A ClientTransport for `proto` dialling a new recording server: (transport, connector, server's factory)."""
    factory = Recording()
    _, number = serve(reactor, factory)
    connector = Connector()
    t = ClientTransport(loop_for(reactor), proto, connector)
    t.dial(DialTarget("127.0.0.1", number, src))
    return t, connector, factory


def test_stop_connecting_reports_a_user_error(reactor) -> None:
    proto = Recorder()
    t, connector, _ = dialling(reactor, proto)
    t.stopConnecting()
    assert connector.failed == []
    spin(reactor, lambda: connector.failed)
    assert connector.failed[0].check(error.UserError) and proto.made == 0


def test_a_client_transport_binds_its_source_and_carries_data(reactor) -> None:
    proto = Recorder()
    t, _, factory = dialling(reactor, proto, "127.0.0.3")
    spin(reactor, lambda: proto.made and factory.built)
    assert t.connected and t.getHost().host == "127.0.0.3"
    t.write(b"Ping\n")
    server = factory.built[0]
    spin(reactor, lambda: server.data == b"Ping\n")
    server.transport.write(b"Pong\n")
    spin(reactor, lambda: proto.data == b"Pong\n")


def test_a_connected_client_transport_takes_its_fd_over_from_the_connect(reactor) -> None:
    """While connecting, a handler of the connect's own has the fd; once connected, the loop
    hands every event to the transport itself (no "still connecting?" test per pong)."""
    loop, proto = loop_for(reactor), Recorder()
    t, _, _ = dialling(reactor, proto)
    assert loop.handlers[t.fd] is not t
    spin(reactor, lambda: proto.made)
    assert loop.handlers[t.fd] is t and t.connected


def test_a_protocol_that_raises_as_its_connect_completes_loses_that_connection(reactor) -> None:
    class Broken(Recorder):
        def connectionMade(self) -> None:
            raise ZeroDivisionError("bug")

    proto = Broken()
    t, connector, factory = dialling(reactor, proto)
    spin(reactor, lambda: proto.lost is not None)
    assert proto.lost.check(ZeroDivisionError) and connector.failed == [] and t.fd == -1
    spin(reactor, lambda: factory.built and factory.built[0].lost is not None)


def test_emfile_on_accept_drops_that_connection_and_counts_it(reactor) -> None:
    counted = []
    factory = Recording()
    port, number = serve(reactor, factory, fail=lambda phase, cause: counted.append((phase, cause)))
    real = port._accept_one
    calls = []

    def at_the_limit():  # the first accept finds the fd table full
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real()

    port._accept_one = at_the_limit
    c = socket.create_connection(("127.0.0.1", number))
    spin(reactor, lambda: counted)
    assert counted == [("connect", "EMFILE")]
    assert factory.built == []  # dropped, not served
    assert c.recv(10) == b""  # the client is told at once instead of hanging
    port._accept_one = real
    c2, proto = peer_of(reactor, factory, number)  # and the port still serves
    assert proto.made == 1


def test_ping_server_over_lean_transports(reactor) -> None:
    counters = Counters()
    _, number = serve(reactor, PingServerFactory("line", counters), fail=counters.fail)
    c = socket.create_connection(("127.0.0.1", number))
    c.setblocking(False)
    spin(reactor, lambda: counters.open == 1)
    got = b""

    def answered(n: int):  # type: ignore[no-untyped-def]
        def check() -> bool:
            nonlocal got
            got += read_available(c)
            return got == b"Pong\n" * n
        return check

    for n in range(1, 4):
        c.sendall(b"Ping\n")
        spin(reactor, answered(n))
    c.sendall(b"Pi")
    turns(reactor)
    c.sendall(b"ng\n")
    spin(reactor, answered(4))
    c.close()
    spin(reactor, lambda: counters.open == 0)
    assert counters.pongs == 4 and counters.failures == {}
