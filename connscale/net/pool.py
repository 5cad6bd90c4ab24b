"""The client connection pool: grow, shrink and count ping/pong connections.

All client policy lives here: pacing connects (token bucket), spreading them
over routes with quotas, the ping schedule and its timeout, and classifying
every failure by phase and cause. Connections are built, and their failed
connects reported, by the pool's `PingClientFactory` (a Twisted
`ClientFactory`, so `reactor.connectTCP(host, port, pool.factory)` works
too). Connections themselves (`wire.ClientConnection`) are a handful of
slots; their timers (ping intervals and pong timeouts) share one
`TimerWheel`, i.e. one reactor `callLater`; their statistics one `Counters`.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any, cast

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IConnector, IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from connscale.config.target import ProfileOptions
from connscale.config.tls import ClientTLSSettings
from connscale.deadline import unless_fired
from connscale.metrics.buckets import MAX_US, SUB_BITS
from connscale.metrics.counters import Counters, classify
from connscale.net import fastpath
from connscale.net.profiles import Profile, make_profile
from connscale.net.routes import Route
from connscale.net.transport import ClientTransport, DialTarget, reset
from connscale.net.wheel import CallLaterTimers, TimerWheel
from connscale.net.wire import PONG, ClientConnection

log = Logger()

PACE_TICK = 0.01  # seconds between connect batches, at least
PACE_BURST = 0.1  # most connects in one batch, in seconds of the rate
#: Connects one pacing wake-up opens, at least, while the rate allows it within
#: PACE_TICK_MAX: a worker's share of a ramp is often a few hundred connects a
#: second (15,000/s over 53 workers: 283/s), and a wake-up every 10 ms for 2-3
#: connects cost the client workers 5,300 wake-ups a second together.
PACE_BATCH = 8
PACE_TICK_MAX = 0.05
#: The timer wheel's tick: pings go out, and timeouts are noticed, on these
#: boundaries (never early, at most one tick late). Coarser ticks wake a worker
#: less often and batch its sends: at 3,300 pings/s per worker, 10 ms -> 50 ms
#: took the client's CPU per round trip from ~11 to ~6 µs (bench/README.md).
WHEEL_TICK = 0.05
#: Pings sent in one burst before the pongs already back are read, so that a
#: burst does not add its own length to the RTTs it measures.
DRAIN_EVERY = 16
_EPS = 1e-9

#: A connection that fails or closes is replaced after a backoff: it starts at
#: REPLACE_BACKOFF and doubles while replacements keep failing (a server that is
#: down must not be hammered), up to REPLACE_BACKOFF_MAX.
REPLACE_BACKOFF = 0.5
REPLACE_BACKOFF_MAX = 10.0

OPEN = ClientConnection.OPEN
CLOSING = ClientConnection.CLOSING
CLOSED = ClientConnection.CLOSED
CONNECTING = ClientConnection.CONNECTING
HANDSHAKING = ClientConnection.HANDSHAKING
ABORTING = ClientConnection.ABORTING


#: How a connection the pool closes ends: "fin" (orderly; the client side keeps
#: the port in TIME_WAIT for a minute) or "rst" (SO_LINGER 0: no TIME_WAIT).
CLOSE_MODES = ("fin", "rst")


@attrs.frozen
class PoolSettings:
    interval: float = 5.0
    timeout: float = 1.0
    rate: float = 2000.0
    framing: str = "line"
    #: Replace a connection that failed or closed, so the pool keeps its target.
    replace: bool = True
    close: str = "fin"
    #: What the connections speak (net/profiles); `framing` "raw" still means the raw profile.
    profile: ProfileOptions = ProfileOptions()
    #: With `tls.enabled` every connection is dialled through `net.tls.ClientTLS.wrap`.
    tls: ClientTLSSettings = ClientTLSSettings()

    def protocol(self) -> str:
        if self.profile.protocol == "line" and self.framing == "raw":
            return "raw"
        return self.profile.protocol


@functools.lru_cache(maxsize=256)
def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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

    def __init__(self, pool: ConnectionPool) -> None:
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
    given, and TLS goes around it (`ConnectionPool.secure`)."""

    noisy = False

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.connector: Any = None

    def startedConnecting(self, connector: Any) -> None:
        self.connector = connector
        self.pool.factory.startedConnecting(connector)

    def buildProtocol(self, addr: Any) -> Any:
        pool = self.pool
        conn = pool.factory.buildProtocol(addr)
        # TCP is up: the connection takes its route from the connector now, not once it is
        # connected (`ConnectionPool.connected`): under TLS that is only after the handshake,
        # and until then the connector is no dial the pool could stop, but a connection it
        # closes (below).
        conn.route = pool._dialing.pop(self.connector, -1)
        route = pool.routes[conn.route] if 0 <= conn.route < len(pool.routes) else None
        layer = pool.secure(conn, route, getattr(addr, "host", ""))
        # The layer is the connection's transport while the handshake runs, as on the lean
        # path: a close mid-handshake stops it (TLSLayer.stopConnecting).
        conn.transport = layer
        return layer

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.pool.factory.clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        pass  # the connection's own connectionLost has told the pool


class ConnectionPool:
    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        settings: PoolSettings,
        routes: Sequence[Route],
        counters: Counters | None = None,
        wheel: TimerWheel | None = None,
        rng: random.Random | None = None,
        dial: Callable[[Route, ClientConnection], Any] | None = None,
        fast_path: bool | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.settings = settings
        protocol = settings.protocol()
        self.profile: Profile = make_profile(attrs.evolve(settings.profile, protocol=protocol),
                                             settings.interval, settings.timeout)
        #: A session opening before the first ping (net/profiles/base.py).
        self.opens = self.profile.opens
        self.handshake_timeout = settings.profile.handshake_timeout
        self.framing = "raw" if protocol == "raw" else "line"
        #: The keepalive request when it is the same for every connection (else profile.ping_for).
        self.ping = self.profile.ping
        self.reply = PONG if protocol == "raw" else PONG + b"\n"
        self._serial = 0
        self.counters = counters if counters is not None else Counters()
        self.rng = rng if rng is not None else random.Random()
        # The fast path (net.fastpath): lean transports on the reactor's epoll
        # and one timer wheel; else Twisted's connectTCP and a callLater each.
        self._loop = fastpath.loop(reactor, fastpath.enabled() if fast_path is None else fast_path) \
            if dial is None else None
        self.wheel: TimerWheel | CallLaterTimers
        if wheel is not None:
            self.wheel = wheel
        elif self._loop is not None or dial is not None:
            self.wheel = TimerWheel(clock, WHEEL_TICK, fire=self.timer, phase=self.rng.random() * WHEEL_TICK)
        else:
            self.wheel = CallLaterTimers(clock, fire=self.timer)
        if settings.close not in CLOSE_MODES:
            raise ValueError(f"close must be one of {CLOSE_MODES}, not {settings.close!r}")
        self._reset_on_close = settings.close == "rst"
        self.factory = PingClientFactory(self)
        self.tls: Any = None
        if settings.tls.enabled:
            # Imported here: a worker that speaks no TLS starts without ssl (compat/startup.py).
            from connscale.net.tls import ClientTLS

            self.tls = ClientTLS(settings.tls, clock, self.counters, self.factory)
        # How a connection attempt starts; tests swap in an in-memory one.
        self.dial = dial if dial is not None else self._dial_tcp
        # Twisted's connectors still connecting -> the route each was given.
        self._dialing: dict[Any, int] = {}
        self._stopped_dials: set[Any] = set()
        self._targets: dict[int, DialTarget] = {}
        self._burst = 0
        self.routes: list[Route] = []
        self.route_load: list[int] = []
        self._next_route = 0
        self._quota_warned = False
        # Insertion-ordered: iteration yields the oldest connection first.
        self._conns: dict[ClientConnection, None] = {}
        self.pending = 0
        # Failed or lost connections waiting out the backoff before they are
        # opened again; counted in `wanted()`, so targets stay true meanwhile.
        self.replacing = 0
        self._backoff = REPLACE_BACKOFF
        self._replace_call: IDelayedCall | None = None
        self.connecting = 0
        self.established = 0
        self._tokens = 0.0
        self._last_pace = 0.0
        self._pace_call: IDelayedCall | None = None
        self._drained: list[defer.Deferred[None]] = []
        self.set_routes(routes)

    # -- public API --------------------------------------------------------
    def start(self, n: int) -> None:
        """Open `n` more connections, paced at `settings.rate` per second."""
        if n <= 0:
            return
        self.pending += n
        if self._pace_call is None:
            self._last_pace = self.clock.seconds()
            self._tokens = 1.0  # the first connect goes out at once
            self._pace()

    def stop(self, n: int) -> int:
        """Close `n` connections, not-yet-started ones first, then oldest first.

        Returns how many were taken away.
        """
        taken = min(n, self.pending)
        self.pending -= taken
        if taken < n and self.replacing:
            later = min(n - taken, self.replacing)
            self.replacing -= later
            taken += later
        if taken < n:
            victims = list(islice(self._live(), n - taken))
            for conn in victims:
                self.close(conn)
            taken += len(victims)
        if taken < n and self._dialing:
            dials = list(islice(self._dialing, n - taken))
            for connector in dials:
                self._stop_dial(connector)
            taken += len(dials)
        return taken

    def count(self) -> int:
        """Established connections."""
        return self.established

    def wanted(self) -> int:
        """Connections held, being opened, or waiting for their turn."""
        return self.established + self.connecting + self.pending + self.replacing

    def set_target(self, n: int) -> None:
        """Grow or shrink towards `n` held-or-coming connections."""
        delta = n - self.wanted()
        if delta > 0:
            self.start(delta)
        elif delta < 0:
            self.stop(-delta)

    def set_routes(self, routes: Sequence[Route]) -> None:
        """Replace the route table; connections already open keep their route.

        Routes are matched by tuple (source, host, port), not by quota: the
        controller changes quotas whenever the number of workers changes.
        """
        old_keys = [r.key() for r in self.routes]
        self.routes = list(routes)
        index = {r.key(): i for i, r in enumerate(self.routes)}
        self.route_load = [0] * len(self.routes)
        self._targets = {}
        for connector, route in list(self._dialing.items()):
            self._dialing[connector] = index.get(old_keys[route], -1) if 0 <= route < len(old_keys) else -1
            if self._dialing[connector] >= 0:
                self.route_load[self._dialing[connector]] += 1
        for conn in self._conns:
            if 0 <= conn.route < len(old_keys):
                conn.route = index.get(old_keys[conn.route], -1)
                if conn.route >= 0:
                    self.route_load[conn.route] += 1
        self._next_route = 0
        self._quota_warned = False

    def capacity(self) -> int:
        return sum(r.quota for r in self.routes)

    def close_all(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """Stop everything; fires when every connection is gone (or after `timeout`)."""
        self.pending = 0
        self.replacing = 0
        if self._replace_call is not None and self._replace_call.active():
            self._replace_call.cancel()
        self._replace_call = None
        for conn in list(self._conns):
            if conn.state not in (CLOSING, ABORTING):
                self.close(conn)
        for connector in list(self._dialing):
            self._stop_dial(connector)
        d: defer.Deferred[None] = defer.Deferred()
        if not self._conns:
            d.callback(None)
            return d
        self._drained.append(d)

        def give_up() -> None:
            for conn in list(self._conns):
                # (A Twisted connector still connecting has nothing to abort.)
                abort = getattr(conn.transport, "abortConnection", None)
                if abort is not None:
                    abort()
            self._fire_drained()

        return unless_fired(self.clock, d, timeout, give_up)

    def close(self, conn: ClientConnection, cause: str | None = None) -> None:
        """Close one connection; with a `cause` it counts as a failure."""
        was = conn.state
        if was in (CLOSING, CLOSED, ABORTING):
            return
        if cause is not None:
            phase = "connect" if was == HANDSHAKING else "steady" if conn.answered else "first_ping"
            self.counters.fail(phase, cause)
            self._replace_later()
        conn.state = ABORTING if was == HANDSHAKING else CLOSING
        self.wheel.cancel(conn)
        transport = conn.transport
        if transport is None:
            return
        if was == CONNECTING:
            # Still dialling: the transport is the lean ClientTransport or a TLSLayer, both a connector.
            cast(IConnector, transport).stopConnecting()
        elif self.settings.close == "rst":
            reset(transport)
        else:
            transport.loseConnection()

    # -- replacing what failed -------------------------------------------------
    def _replace_later(self) -> None:
        """Open one connection again once the current backoff has passed."""
        if not self.settings.replace or not self.routes:
            return
        self.replacing += 1
        if self._replace_call is None:
            delay = self._backoff
            # Failures that keep coming after a release back off further; a
            # successful connect resets it (see `connected`).
            self._backoff = min(self._backoff * 2, REPLACE_BACKOFF_MAX)
            self._replace_call = self.clock.callLater(delay, self._release_replacements)

    def _release_replacements(self) -> None:
        self._replace_call = None
        n, self.replacing = self.replacing, 0
        self.start(n)

    # -- pacing --------------------------------------------------------------
    def _pace(self) -> None:
        self._pace_call = None
        now = self.clock.seconds()
        rate = self.settings.rate
        # Up to PACE_BURST seconds' worth at once: a busy loop that came back
        # late catches up instead of losing the rate it was asked for.
        burst = max(1.0, rate * PACE_BURST)
        self._tokens = min(self._tokens + (now - self._last_pace) * rate, burst)
        self._last_pace = now
        n = min(int(self._tokens), self.pending)
        self._tokens -= n
        self.pending -= n
        for _ in range(n):
            self._open_one()
        if self.pending:
            self._pace_call = self.clock.callLater(pace_tick(rate), self._pace)

    def _pick_route(self) -> int:
        routes, load = self.routes, self.route_load
        count = len(routes)
        for step in range(count):
            i = (self._next_route + step) % count
            if load[i] < routes[i].quota:
                self._next_route = i + 1
                return i
        return -1

    def _open_one(self) -> None:
        idx = self._pick_route()
        if idx < 0:
            self.counters.fail("connect", "route_quota")
            if not self._quota_warned:
                self._quota_warned = True
                log.warn(
                    "all {routes} routes are full ({capacity} connections); add source IPs "
                    "or server ports to place more",
                    routes=len(self.routes),
                    capacity=self.capacity(),
                )
            return
        route = self.routes[idx]
        self.route_load[idx] += 1
        if self.dial == self._dial_tcp and (self._loop is None or not _is_address(route.host)):
            # Twisted's own transport: its factory builds the connection once
            # connected; the connector carries the route until then.
            bind = (route.src, 0) if route.src else None
            factory = self.factory if self.tls is None else _TLSDial(self)
            connector = self.reactor.connectTCP(route.host, route.port, factory, bindAddress=bind)
            self._dialing[connector] = idx
            return
        # Its peer address is known only once connected; the factory does not need it.
        conn = self.factory.buildProtocol(None)
        conn.route = idx
        self.connecting += 1
        conn.transport = self.dial(route, conn)

    def next_serial(self) -> int:
        """A number for each connection of this pool (MQTT client ids, `{n}`)."""
        self._serial += 1
        return self._serial

    def adopt(self, conn: ClientConnection) -> None:
        """Track a connection the factory built (held, counted, closed with the pool)."""
        self._conns[conn] = None

    def secure(self, conn: ClientConnection, route: Route | None, host: str = "") -> Any:
        """What the transport talks to: `conn` itself, or TLS around it.

        The one place a client connection is wrapped in TLS (`client.tls`, net/tls): both
        dial paths go through here (the lean path's `_dial_tcp`, Twisted's `_TLSDial`), so
        every profile gets TLS alike, its session opening after the TLS handshake. The
        name checked and sent as SNI is `client.tls.server_name` (a URL's host name sets
        it), else the route's host. (`route` is None for a dial whose route was retired
        meanwhile: `host` is the address it reached.)"""
        if self.tls is None:
            return conn
        if route is None:
            return self.tls.wrap(conn, self.settings.tls.server_name or host, None)
        return self.tls.wrap(conn, self.settings.tls.server_name or route.host, route.key())

    def _dial_tcp(self, route: Route, conn: ClientConnection) -> Any:
        """A lean transport (the fast path) dialling `route` for `conn`, through TLS with
        `client.tls`."""
        assert self._loop is not None
        protocol = self.secure(conn, route)
        transport = ClientTransport(self._loop, protocol, self.factory)
        idx = conn.route
        target = self._targets.get(idx)
        if target is None:
            # close: rst holds for every end of the socket, a worker's exit included.
            target = self._targets[idx] = DialTarget(route.host, route.port, route.src, self._reset_on_close)
        transport.dial(target)
        # With TLS the layer is the connection's transport from the start: closing it
        # mid-handshake stops the handshake, as closing a connecting transport stops TCP.
        return transport if protocol is conn else protocol.over(transport)

    def _stop_dial(self, connector: Any) -> None:
        """Stop one of Twisted's connectors; its failure then is ours, not counted."""
        route = self._dialing.pop(connector, -1)
        if 0 <= route < len(self.route_load):
            self.route_load[route] -= 1
        self._stopped_dials.add(connector)
        connector.stopConnecting()

    # -- events from connections -------------------------------------------
    def connected(self, conn: ClientConnection) -> None:
        if self._dialing:
            # Over Twisted's transport: the route its connector was given. (With TLS the
            # transport is the layer, and `_TLSDial` gave the route when TCP connected.)
            route = self._dialing.pop(getattr(conn.transport, "connector", None), None)
            if route is not None:
                conn.route = route
        if self.opens:
            # The session opens first; until then the connection is still connecting.
            conn.state = HANDSHAKING
            now = self.clock.seconds()
            conn.sent_at = now
            route_ = self.routes[conn.route] if 0 <= conn.route < len(self.routes) else None
            host, port = (route_.host, route_.port) if route_ is not None else ("localhost", 0)
            assert conn.transport is not None  # connected: makeConnection set it
            conn.transport.write(self.profile.opening(conn, host, port))
            self.wheel.schedule(conn, now + self.handshake_timeout)
            return
        self._opened(conn)

    def session_open(self, conn: ClientConnection) -> None:
        """The profile's session opening completed: the connection is open and pings."""
        if conn.state != HANDSHAKING:
            self.bad_reply(conn, "unexpected_reply")
            return
        conn.state = OPEN
        conn.sent_at = 0.0
        self._opened(conn)

    def refused(self, conn: ClientConnection, cause: str, words: bytes | str) -> None:
        """The server said no, in `words`: a failure by `cause`, the words kept as a sample."""
        self.counters.say(cause, words)
        self.close(conn, cause)

    def _opened(self, conn: ClientConnection) -> None:
        self.connecting -= 1
        self.established += 1
        self._backoff = REPLACE_BACKOFF
        c = self.counters
        c.open += 1
        c.opened += 1
        # First ping at a random offset in (0, interval] spreads the load.
        interval = self.settings.interval
        conn.next_ping = self.clock.seconds() + interval * (1.0 - self.rng.random())
        self.wheel.schedule(conn, conn.next_ping)

    def connect_failed(self, conn: ClientConnection | None, reason: Failure, connector: Any = None) -> None:
        """A connect failed (`conn` is None when Twisted's own connector failed
        before building one); unless we stopped it, it counts by cause."""
        stopped = conn is not None and conn.state == CLOSING
        if conn is not None:
            self._forget(conn)
        elif connector is not None:
            if connector in self._stopped_dials:
                self._stopped_dials.discard(connector)
                stopped = True
            route = self._dialing.pop(connector, -1)
            if 0 <= route < len(self.route_load):
                self.route_load[route] -= 1
        self.connecting -= 1
        if not stopped:
            self.counters.fail("connect", classify(reason))
            self._replace_later()

    def lost(self, conn: ClientConnection, reason: Failure) -> None:
        state = conn.state
        if state in (HANDSHAKING, ABORTING):
            self._forget(conn)
            self.connecting -= 1
            if state == HANDSHAKING:
                # Closed or reset before the session opened: the server would not have it.
                self.counters.fail("connect", classify(reason))
                self._replace_later()
            return
        closing = state == CLOSING
        self._forget(conn)
        self.established -= 1
        c = self.counters
        c.open -= 1
        c.closed += 1
        if not closing:
            c.fail("steady" if conn.answered else "first_ping", classify(reason))
            self._replace_later()

    def pong(self, conn: ClientConnection) -> None:
        if not conn.sent_at or conn.state != OPEN:
            self.bad_reply(conn, "unexpected_pong")
            return
        rtt = self.clock.seconds() - conn.sent_at
        if rtt > self.settings.timeout:
            # Late by less than a wheel tick: the deadline had passed, so it
            # is the timeout the tick was about to report, not a pong.
            self.close(conn, "no_answer_from_server")
            return
        c = self.counters
        c.pongs += 1
        # metrics.buckets.index(us), inlined: this runs once per pong.
        us = int(rtt * 1e6)
        if us < 1:
            us = 1
        elif us > MAX_US:
            us = MAX_US
        shift = us.bit_length() - SUB_BITS
        c.rtt.counts[(shift << 7) + (us >> shift) if shift > 0 else us] += 1
        conn.sent_at = 0.0
        conn.answered = True
        self.wheel.schedule(conn, conn.next_ping)

    def bad_reply(self, conn: ClientConnection, kind: str) -> None:
        self.counters.protocol[kind] = self.counters.protocol.get(kind, 0) + 1
        self.close(conn, "protocol_error")

    def timer(self, conn: ClientConnection, now: float) -> None:
        if conn.state != OPEN:
            if conn.state == HANDSHAKING:
                if now + _EPS >= conn.sent_at + self.handshake_timeout:
                    self.close(conn, "handshake_timeout")
                else:
                    self.wheel.schedule(conn, conn.sent_at + self.handshake_timeout)
            return
        s = self.settings
        if conn.sent_at:
            deadline = conn.sent_at + s.timeout
            if now + _EPS >= deadline:
                self.close(conn, "no_answer_from_server")
                return
            # Still waiting while the next ping is due: skip it, as the C
            # reference does; one ping in flight per connection.
            while conn.next_ping <= now + _EPS:
                self.counters.skipped += 1
                conn.next_ping += s.interval
            self.wheel.schedule(conn, min(deadline, conn.next_ping))
            return
        transport = conn.transport
        if transport is None:
            return
        ping = self.ping
        transport.write(ping if ping is not None else self.profile.ping_for(conn))
        self.counters.pings += 1
        # Stamp each send: a tick's batch goes out over a few milliseconds.
        conn.sent_at = self.clock.seconds()
        conn.next_ping += s.interval
        if conn.next_ping <= now:
            # The reactor fell behind; don't fire a burst of catch-up pings.
            conn.next_ping = now + s.interval
        self.wheel.schedule(conn, min(now + s.timeout, conn.next_ping))
        self._burst += 1
        if self._burst >= DRAIN_EVERY and self._loop is not None:
            # A long burst of pings: read the pongs that are back already
            # (this connection is fully sent and stamped by now).
            self._burst = 0
            self._loop.drain()

    # -- internals -----------------------------------------------------------
    def _live(self):
        return (c for c in self._conns if c.state in (OPEN, CONNECTING, HANDSHAKING))

    def _forget(self, conn: ClientConnection) -> None:
        conn.state = CLOSED
        self.wheel.cancel(conn)
        conn.transport = None
        if self._conns.pop(conn, 0) is None and 0 <= conn.route < len(self.route_load):
            self.route_load[conn.route] -= 1
        if not self._conns and self._drained:
            self._fire_drained()

    def _fire_drained(self) -> None:
        waiting, self._drained = self._drained, []
        for d in waiting:
            if not d.called:
                d.callback(None)


def pace_tick(rate: float) -> float:
    """Seconds between pacing wake-ups at `rate` connects/s: PACE_BATCH connects
    each, within [PACE_TICK, PACE_TICK_MAX] (a batch stays under PACE_BURST's cap)."""
    if rate <= 0:
        return PACE_TICK_MAX
    return min(PACE_TICK_MAX, max(PACE_TICK, PACE_BATCH / rate))


