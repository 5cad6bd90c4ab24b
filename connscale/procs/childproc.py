"""Child processes we speak Perspective Broker with over their stdin/stdout.

Workers are children of the hub or of an agent. Their control channel is the
pipe pair the parent already owns, so a worker needs no port, no secret and no
address, and its death is noticed the instant the pipe closes. The protocol
is still PB, the one control protocol of connscale. The child's stderr carries
its log, which the parent re-logs with the worker's name in front.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

log = Logger(namespace="connscale.child")


class PBChild(ProcessProtocol):
    """The parent's end of one child: a PB broker bridged onto its pipes."""

    def __init__(self, name: str, on_exit: Callable[["PBChild", Failure], None]) -> None:
        self.name = name
        self.on_exit = on_exit
        self.factory = pb.PBClientFactory()
        self.broker = self.factory.buildProtocol(None)
        self.root: pb.RemoteReference | None = None
        self.ready: defer.Deferred[pb.RemoteReference] = defer.Deferred()
        self._err = b""
        self.pid: int | None = None
        self.ended = False

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.broker.makeConnection(self.transport)

        def got_root(root: pb.RemoteReference) -> defer.Deferred:
            self.root = root
            # The first answered call proves the child imported and started.
            return root.callRemote("hello")

        self.factory.getRootObject().addCallback(got_root).addCallbacks(
            lambda info: self.ready.callback(info), lambda f: None if self.ready.called else self.ready.errback(f)
        )

    def outReceived(self, data: bytes) -> None:
        self.broker.dataReceived(data)

    def errReceived(self, data: bytes) -> None:
        lines = (self._err + data).split(b"\n")
        self._err = lines.pop()
        if len(self._err) > 65536:
            lines.append(self._err)
            self._err = b""
        for line in lines:
            if line.strip():
                log.info("[{name}] {line}", name=self.name, line=line.decode("utf-8", "replace").strip())

    def processEnded(self, reason: Failure) -> None:
        self.ended = True
        self.broker.connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(reason)
        self.on_exit(self, reason)

    def call(self, method: str, *args: object) -> defer.Deferred:
        if self.root is None or self.ended:
            return defer.fail(pb.DeadReferenceError(f"{self.name} is not running"))
        return self.root.callRemote(method, *args)

    def signal(self, sig: str) -> None:
        if not self.ended:
            try:
                self.transport.signalProcess(sig)  # type: ignore[union-attr]
            except Exception:
                pass


def spawn_python(
    reactor: IReactorProcess,
    module: str,
    args: Sequence[str],
    child: PBChild,
) -> PBChild:
    """Run `python -m module args...` with PB on its stdio and our environment."""
    argv = [sys.executable, "-m", module, *args]
    # spawnProcess gives a child an empty environment unless told otherwise.
    reactor.spawnProcess(child, sys.executable, argv, env=dict(os.environ), childFDs={0: "w", 1: "r", 2: "r"})
    return child


def stop_reactor(reactor: object) -> None:
    """Stop once: the controller's shutdown and the lifeline may both ask."""
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


class _OrphanGuard(pb.Broker):
    """A worker whose parent is gone has nobody to report to: it exits."""

    on_lost: Callable[[], None] = staticmethod(lambda: None)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.on_lost()


def serve_stdio(reactor, root: pb.Root, on_lost: Callable[[], None]) -> pb.Broker:  # type: ignore[no-untyped-def]
    """The child's end: serve `root` over our stdin/stdout; `on_lost` when the parent goes."""
    from twisted.internet import stdio

    factory = pb.PBServerFactory(root)
    factory.protocol = _OrphanGuard
    broker = factory.buildProtocol(None)
    broker.on_lost = on_lost
    stdio.StandardIO(broker, reactor=reactor)
    return broker
