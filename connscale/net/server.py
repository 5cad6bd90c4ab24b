"""The ping/pong server: factory, listening sockets and the service holding them.

Sockets are bound by hand rather than through `strports`, because each server
worker needs `SO_REUSEPORT` on every port (so the kernel spreads accepts over
processes) and an explicit backlog, and because binding *before* the reactor
runs lets a port in use stop start-up with one clear line.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from connscale.metrics.counters import Counters, errno_cause
from connscale.net.dispatch import loop_for
from connscale.net.listen import ListenError
from connscale.net.transport import ListeningPort
from connscale.net.wire import SERVER_PROTOCOLS, ServerState

log = Logger()


class PingServerFactory(ServerFactory):
    def __init__(self, framing: str, counters: Counters, max_line: int = 1024) -> None:
        self.state = ServerState(counters, max_line)
        self.protocol_class = SERVER_PROTOCOLS[framing]
        self.noisy = False

    def buildProtocol(self, addr: object):  # type: ignore[no-untyped-def]
        return self.protocol_class(self.state)


def bind_sockets(
    interface: str, ports: Sequence[int], backlog: int, reuse_port: bool = False
) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for every port; all or nothing."""
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    made: list[socket.socket] = []
    try:
        for port in ports:
            sock = socket.socket(family, socket.SOCK_STREAM)
            made.append(sock)
            # A restarted server must not wait out TIME_WAIT (the original's finding 1).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                sock.bind((interface, port))
                sock.listen(backlog)
            except OSError as e:
                raise ListenError(
                    f"cannot listen on {interface}:{port}: {errno_cause(e.errno or 0)} ({e.strerror})"
                ) from None
            sock.setblocking(False)
    except BaseException:
        for sock in made:
            sock.close()
        raise
    return made


def listen_on(
    reactor: IReactorSocket, sock: socket.socket, factory: ServerFactory, fail: Callable[[str, str], None] | None = None
) -> IListeningPort:
    """Serve `factory` on a bound, listening socket (which the port now owns).

    On an epoll reactor, connections get connscale's lean transports and accept
    errors go to `fail(phase, cause)`; elsewhere Twisted's own port is used.
    """
    loop = loop_for(reactor)
    if loop is not None:
        port = ListeningPort(loop, sock, factory, fail)
        port.startListening()
        return port
    adopted = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    sock.close()  # the port holds its own duplicate
    return adopted


class ListeningService(Service):
    """Adopts pre-bound sockets into the reactor while the service runs."""

    def __init__(self, reactor: IReactorSocket, sockets: Sequence[socket.socket], factory: ServerFactory) -> None:
        self.reactor = reactor
        self.sockets = list(sockets)
        self.factory = factory
        self.ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        fail = self.factory.state.counters.fail if isinstance(self.factory, PingServerFactory) else None
        for sock in self.sockets:
            self.ports.append(listen_on(self.reactor, sock, self.factory, fail))
        self.sockets = []

    def stopService(self):  # type: ignore[no-untyped-def]
        super().stopService()
        from twisted.internet import defer

        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for p in self.ports:
            h = p.getHost()
            out.append((h.host, h.port))
        return out
