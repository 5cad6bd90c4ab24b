"""The ping/pong server: its factory and its listening sockets.

Sockets are bound by hand rather than through `strports`, because each server
worker needs `SO_REUSEPORT` on every port (so the kernel spreads accepts over
processes) and an explicit backlog, and because binding *before* the reactor
runs lets a port in use stop start-up with one clear line.

The service that holds the ports in a twistd application (`ListeningService`)
lives in `net.listen`: a server worker needs no service and no
`twisted.application` (~0.25 MB of every worker's RSS), only `serve`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from connscale.config.tls import ServerTLSSettings
from connscale.metrics.counters import Counters, errno_cause
from connscale.net import fastpath
from connscale.net.port import ListeningPort
from connscale.net.wire import SERVER_PROTOCOLS, ServerState


def server_protocol(framing: str) -> type:
    """The protocol class of a `server.framing`; WebSocket's (net/wsserver) is imported only
    by the workers that speak it (hashlib, base64 and the profiles' HTTP parser: a line
    worker's start leaves them out)."""
    if framing == "websocket":
        from connscale.net.wsserver import WebSocketServerProtocol

        return WebSocketServerProtocol
    return SERVER_PROTOCOLS[framing]

log = Logger()


class ListenError(Exception):
    """A listening socket could not be set up; the message is one line."""


class PingServerFactory(ServerFactory):
    def __init__(self, framing: str, counters: Counters, max_line: int = 1024) -> None:
        self.state = ServerState(counters, max_line)
        self.protocol_class = server_protocol(framing)
        self.noisy = False

    def buildProtocol(self, addr: object):
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
    reactor: IReactorSocket, sock: socket.socket, factory: ServerFactory, fail: Callable[[str, str], None] | None = None,
    fast_path: bool | None = None,
) -> IListeningPort:
    """Serve `factory` on a bound, listening socket (which the port now owns).

    On the fast path (`net.fastpath`), connections get connscale's lean
    transports and accept errors go to `fail(phase, cause)`; off it, Twisted's
    own port (`adoptStreamPort`: listenTCP's port for a socket bound here).
    """
    loop = fastpath.loop(reactor, fastpath.enabled() if fast_path is None else fast_path)
    if loop is not None:
        port = ListeningPort(loop, sock, factory, fail)
        port.startListening()
        return port
    adopted = reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    sock.close()  # the port holds its own duplicate
    return adopted


def serve(reactor: IReactorSocket, sockets: Sequence[socket.socket], factory: ServerFactory,
          tls: ServerTLSSettings | None = None, fast_path: bool | None = None) -> list[IListeningPort]:
    """Listen on every pre-bound socket with `factory` (the ports own the sockets now);
    with `tls` enabled, every connection speaks TLS around whatever `factory` builds."""
    counters = factory.state.counters if isinstance(factory, PingServerFactory) else None
    fail = counters.fail if counters is not None else None
    if tls is not None and tls.enabled:
        factory = tls_factory(reactor, tls, factory, counters)
    return [listen_on(reactor, sock, factory, fail, fast_path) for sock in sockets]


def tls_factory(reactor: Any, tls: ServerTLSSettings, factory: ServerFactory,
                counters: Counters | None = None) -> ServerFactory:
    """`factory` behind TLS (net/tls); its handshake failures are counted in `counters`."""
    # Imported here: a server worker that serves no TLS starts without ssl (compat/startup.py).
    from connscale.net.tls import ServerTLS, ServerTLSFactory

    return ServerTLSFactory(ServerTLS(tls, reactor, counters if counters is not None else Counters()), factory)
