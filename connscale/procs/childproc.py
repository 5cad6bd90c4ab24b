"""Child processes we speak Perspective Broker with over their stdin/stdout.

Workers are children of the hub or of an agent. Their control channel is the
pipe pair the parent already owns, so a worker needs no port, no secret and no
address, and its death is noticed the instant the pipe closes. The protocol
is still PB, the one control protocol of connscale. The child's stderr carries
its log, which the parent re-logs with the worker's name in front.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, Sequence

from twisted.internet import defer
from twisted.internet.interfaces import IReactorCore, IReactorProcess
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.spread import pb

from connscale.procs.child import ChildProcess, child_environment

class PBChild(ChildProcess):
    """The parent's end of one child: a PB broker bridged onto its pipes.

    fd 1 carries PB (never split into lines); fd 2 is the child's log, which
    we re-log with its name in front.
    """

    line_fds = (2,)

    def __init__(self, name: str, on_exit: Callable[["PBChild", Failure], None], reactor: Any = None) -> None:
        super().__init__(reactor, name)
        self.on_exit = on_exit
        self.factory = pb.PBClientFactory()
        self.broker = self.factory.buildProtocol(None)
        self.root: pb.RemoteReference | None = None
        self.ready: defer.Deferred[pb.RemoteReference] = defer.Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.broker.makeConnection(self.transport)

        def got_root(root: pb.RemoteReference) -> defer.Deferred:
            self.root = root
            # The first answered call proves the child imported and started.
            return root.callRemote("hello")

        self.factory.getRootObject().addCallback(got_root).addCallbacks(
            lambda info: self.ready.callback(info), lambda f: None if self.ready.called else self.ready.errback(f)
        )

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.broker.dataReceived(data)
        else:
            super().childDataReceived(childFD, data)

    def exited(self, reason: Failure) -> None:
        self.broker.connectionLost(reason)
        if not self.ready.called:
            self.ready.errback(reason)
        self.on_exit(self, reason)

    def call(self, method: str, *args: object) -> defer.Deferred:
        if self.root is None or not self.running:
            return defer.fail(pb.DeadReferenceError(f"{self.name} is not running"))
        return self.root.callRemote(method, *args)


def spawn_python(
    reactor: IReactorProcess,
    module: str,
    args: Sequence[str],
    child: PBChild,
    env: Mapping[str, str] | None = None,
) -> PBChild:
    """Run `python -m module args...` with PB on its stdio and our environment (less its
    secrets, `child.child_environment`), plus `env`."""
    child.reactor = reactor
    child.spawn([sys.executable, "-m", module, *args], env={**child_environment(), **(env or {})},
                child_fds={0: "w", 1: "r", 2: "r"})
    return child


def stop_reactor(reactor: IReactorCore) -> None:
    """Stop once: the controller's shutdown and the lifeline may both ask."""
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


class _OrphanGuard(pb.Broker):
    """A worker whose parent is gone has nobody to report to: it exits."""

    on_lost: Callable[[], None] = staticmethod(lambda: None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.on_lost()


def serve_stdio(reactor, root: pb.Root, on_lost: Callable[[], None]) -> pb.Broker:
    """The child's end: serve `root` over our stdin/stdout; `on_lost` when the parent goes."""
    from twisted.internet import stdio

    factory = pb.PBServerFactory(root)
    factory.protocol = _OrphanGuard
    broker = factory.buildProtocol(None)
    broker.on_lost = on_lost
    stdio.StandardIO(broker, reactor=reactor)
    return broker
