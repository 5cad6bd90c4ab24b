"""How a pool's connections are dialled, and who builds them.

`PingClientFactory` is the brief's `ClientFactory`: it builds every connection of a
pool and hands every failed connect to the pool, which classifies it. `Dialer` opens
connections two ways, the same policy above both (`net.fastpath`):

- the fast path: a lean `ClientTransport` per connection, on connscale's dispatch
  loop; the connection is built first and rides its transport from the start;
- Twisted's `connectTCP` (the switch is off, the reactor is not epoll, or the host is
  a name to resolve): the factory builds the connection once TCP is up, so until then
  the connector is what the pool holds (`Dialer.connectors`, with its route).

With `client.tls`, both go through `Dialer.secure`: the one place a connection is
wrapped in TLS.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IConnector, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.python.failure import Failure

from connscale.config.tls import ClientTLSSettings
from connscale.metrics.counters import Counters
from connscale.net.dispatch import Loop
from connscale.net.profiles.base import Profile
from connscale.net.routes import Route
from connscale.net.spread import RouteTable
from connscale.net.connector import ClientTransport, DialTarget
from connscale.net.wire import ClientConnection, PoolHooks

if TYPE_CHECKING:
    from connscale.net.tls import ClientTLS


@functools.lru_cache(maxsize=256)
def is_address(host: str) -> bool:
    """An IP address, which the lean transport connects to without resolving it."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class FactoryPool(PoolHooks, TypingProtocol):
    """What the factory reads and calls on its pool (`pool.ConnectionPool`, which imports this module)."""

    connecting: int

    @property
    def profile(self) -> Profile: ...

    def adopt(self, conn: ClientConnection) -> None: ...
    def connect_failed(self, conn: ClientConnection | None, reason: Failure, connector: Any = None) -> None: ...


class PingClientFactory(ClientFactory):
    """The brief's `ClientFactory`: builds every `ClientConnection` of a pool
    and hands each failed connect to the pool, which classifies it by cause.

    The pool dials through it over connscale's lean transports; a library user
    can hand it to Twisted as well: `reactor.connectTCP(host, port,
    pool.factory)` opens one more connection that pings on the pool's interval
    and is counted, timed out and classified like the pool's own.
    """

    noisy = False
    protocol = ClientConnection

    def __init__(self, pool: FactoryPool) -> None:
        self.pool = pool

    def startedConnecting(self, connector: Any) -> None:
        # Only Twisted's connectTCP calls this; the pool counts its own lean dials.
        self.pool.connecting += 1

    def buildProtocol(self, addr: Any) -> ClientConnection:
        pool = self.pool
        conn = pool.profile.connection(pool, -1)
        conn.factory = self
        pool.adopt(conn)
        return conn

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        # connscale's transports are their own connector and know their
        # connection; Twisted's Connector fails before any connection was built.
        # A TLS layer (net/tls) stands between the transport and the connection; a handshake
        # that failed is told with the layer itself (Twisted's transport has let go of it by then).
        conn = getattr(connector, "wrappedProtocol", None) or getattr(connector, "protocol", None)
        conn = getattr(conn, "wrappedProtocol", conn)
        self.pool.connect_failed(conn if isinstance(conn, ClientConnection) else None, reason, connector)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass  # the connection's own connectionLost has told the pool


class _TLSDial(ClientFactory):
    """A dial over Twisted's own TCP transport with `client.tls`: the connection is built
    once TCP connects, as the pool's factory builds it, with the route its connector was
    given, and TLS goes around it (`Dialer.secure`)."""

    noisy = False

    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self.connector: Any = None

    def startedConnecting(self, connector: Any) -> None:
        self.connector = connector
        self.dialer.factory.startedConnecting(connector)

    def buildProtocol(self, addr: Any) -> Any:
        dialer = self.dialer
        conn = dialer.factory.buildProtocol(addr)
        # TCP is up: the connection takes its route from the connector now, not once it is
        # connected (`ConnectionPool.connected`): under TLS that is only after the handshake,
        # and until then the connector is no dial the pool could stop, but a connection it
        # closes (below).
        conn.route = dialer.connectors.pop(self.connector, -1)
        layer = dialer.secure(conn, dialer.table.get(conn.route), getattr(addr, "host", ""))
        # The layer is the connection's transport while the handshake runs, as on the lean
        # path: a close mid-handshake stops it (TLSLayer.stopConnecting).
        conn.transport = layer
        return layer

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.dialer.factory.clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass  # the connection's own connectionLost has told the pool


class Dialer:
    """Starts and stops the dials of one pool; `loop` is None off the fast path."""

    def __init__(
        self,
        reactor: IReactorTCP,
        loop: Loop | None,
        factory: PingClientFactory,
        table: RouteTable,
        reset_on_close: bool,
        tls: ClientTLS | None = None,
    ) -> None:
        self.reactor = reactor
        self.loop = loop
        self.factory = factory
        self.table = table
        #: SO_LINGER 0 on every lean socket (`close: rst`).
        self.reset_on_close = reset_on_close
        #: `net.tls.ClientTLS` with `client.tls`, else None.
        self.tls = tls
        #: Twisted's connectors still connecting -> the route each was given.
        self.connectors: dict[Any, int] = {}
        self._stopped: set[Any] = set()
        self._targets: dict[int, DialTarget] = {}

    def lean(self, route: Route) -> bool:
        """Whether `route` is dialled on the fast path (else by Twisted's connectTCP)."""
        return self.loop is not None and is_address(route.host)

    def connect_tcp(self, route: Route, idx: int) -> None:
        """Twisted's own transport: its factory builds the connection once connected;
        the connector carries the route until then."""
        bind = (route.src, 0) if route.src else None
        factory = self.factory if self.tls is None else _TLSDial(self)
        connector = self.reactor.connectTCP(route.host, route.port, factory, bindAddress=bind)
        self.connectors[connector] = idx

    def dial(self, route: Route, conn: ClientConnection) -> Any:
        """A lean transport (the fast path) dialling `route` for `conn`, through TLS with
        `client.tls`."""
        assert self.loop is not None
        protocol = self.secure(conn, route)
        transport = ClientTransport(self.loop, protocol, self.factory)
        idx = conn.route
        target = self._targets.get(idx)
        if target is None:
            # close: rst holds for every end of the socket, a worker's exit included.
            target = self._targets[idx] = DialTarget(route.host, route.port, route.src, self.reset_on_close)
        transport.dial(target)
        # With TLS the layer is the connection's transport from the start: closing it
        # mid-handshake stops the handshake, as closing a connecting transport stops TCP.
        return transport if protocol is conn else protocol.over(transport)

    def secure(self, conn: ClientConnection, route: Route | None, host: str = "") -> Any:
        """What the transport talks to: `conn` itself, or TLS around it.

        The one place a client connection is wrapped in TLS (`client.tls`, net/tls): both
        dial paths go through here (the lean path's `dial`, Twisted's `_TLSDial`), so
        every profile gets TLS alike, its session opening after the TLS handshake. The
        name checked and sent as SNI is `client.tls.server_name` (a URL's host name sets
        it), else the route's host. (`route` is None for a dial whose route was retired
        meanwhile: `host` is the address it reached.)"""
        if self.tls is None:
            return conn
        server_name = self.tls.settings.server_name
        if route is None:
            return self.tls.wrap(conn, server_name or host, None)
        return self.tls.wrap(conn, server_name or route.host, route.key())

    def stop(self, connector: IConnector) -> None:
        """Stop one of Twisted's connectors; its failure then is ours, not counted."""
        self.table.release(self.connectors.pop(connector, -1))
        self._stopped.add(connector)
        connector.stopConnecting()

    def failed(self, connector: object) -> bool:
        """One of Twisted's connectors failed: its route is free again. True when we
        had stopped it."""
        stopped = connector in self._stopped
        self._stopped.discard(connector)
        self.table.release(self.connectors.pop(connector, -1))
        return stopped

    def routes_moved(self, moved: list[int]) -> None:
        """The table changed (`RouteTable.replace`): each connector's route by its new index."""
        self._targets = {}
        for connector, route in list(self.connectors.items()):
            self.connectors[connector] = self.table.hold(moved[route] if 0 <= route < len(moved) else -1)


def client_tls(settings: ClientTLSSettings, clock: IReactorTime, counters: Counters,
               factory: PingClientFactory) -> ClientTLS | None:
    """The pool's `net.tls.ClientTLS` with `client.tls` enabled, else None."""
    if not settings.enabled:
        return None
    # Imported here: a worker that speaks no TLS starts without ssl (compat/startup.py).
    from connscale.net.tls import ClientTLS

    return ClientTLS(settings, clock, counters, factory)
