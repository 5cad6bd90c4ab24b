"""The client connection pool: grow, shrink and count ping/pong connections.

The pool is the state of every connection of one worker and the policy above
them: it opens and closes them towards a target, runs each one's session
opening, ping schedule and timeouts, and counts every failure by phase and
cause. Its helpers each do one job, one module each: `net.pacing` lets the
connects out at the rate asked, `net.spread` places them on routes within
their quotas, `net.dial` dials them (the fast path's lean transports or
Twisted's `connectTCP`; `PingClientFactory` builds them, so
`reactor.connectTCP(host, port, pool.factory)` works too), and `net.replace`
opens again what failed, after a backoff. Connections themselves
(`wire.ClientConnection`) are a handful of slots; their timers (ping
intervals and pong timeouts) share one `TimerWheel`, i.e. one reactor
`callLater`; their statistics one `Counters`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any, cast

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IConnector, IReactorTCP, IReactorTime
from twisted.python.failure import Failure

from connscale.config.target import ProfileOptions
from connscale.config.tls import ClientTLSSettings
from connscale.deadline import unless_fired
from connscale.metrics.buckets import MAX_US, SUB_BITS
from connscale.metrics.counters import Counters, classify
from connscale.net import fastpath
from connscale.net.dial import Dialer, PingClientFactory, client_tls
from connscale.net.pacing import Pacer
from connscale.net.profiles import Profile, make_profile
from connscale.net.replace import Replacements
from connscale.net.routes import Route
from connscale.net.spread import RouteTable
from connscale.net.transport import reset
from connscale.net.wheel import CallLaterTimers, TimerWheel
from connscale.net.wire import PONG, ClientConnection

#: The timer wheel's tick: pings go out, and timeouts are noticed, on these
#: boundaries (never early, at most one tick late). Coarser ticks wake a worker
#: less often and batch its sends: at 3,300 pings/s per worker, 10 ms -> 50 ms
#: took the client's CPU per round trip from ~11 to ~6 µs (bench/README.md).
WHEEL_TICK = 0.05
#: Pings sent in one burst before the pongs already back are read, so that a
#: burst does not add its own length to the RTTs it measures.
DRAIN_EVERY = 16
_EPS = 1e-9

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


class ConnectionPool:
    """One worker's client connections, towards a target (`set_target`), over its routes.

    What each connection is doing is its `state` (ClientConnection's states); the pool
    counts them (`connecting`, `established`) and what is still to come (`pending`,
    `replacing`): `wanted()` is their sum, the number `set_target` steers.
    """

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
        self.counters = counters if counters is not None else Counters()
        self.rng = rng if rng is not None else random.Random()
        self._speak(settings)
        # The fast path (net.fastpath): lean transports on the reactor's epoll
        # and one timer wheel; else Twisted's connectTCP and a callLater each.
        self._loop = fastpath.loop(reactor, fastpath.enabled() if fast_path is None else fast_path) \
            if dial is None else None
        self.wheel: TimerWheel | CallLaterTimers = wheel if wheel is not None else self._timers(dial is not None)
        if settings.close not in CLOSE_MODES:
            raise ValueError(f"close must be one of {CLOSE_MODES}, not {settings.close!r}")
        self.factory = PingClientFactory(self)
        self.spread = RouteTable()
        self.dialer = Dialer(reactor, self._loop, self.factory, self.spread, settings.close == "rst",
                             client_tls(settings.tls, clock, self.counters, self.factory))
        # How a connection attempt starts; tests swap in an in-memory one.
        self.dial = dial if dial is not None else self.dialer.dial
        self._own_dial = dial is None
        # The rate as the settings say at each wake-up: a worker replaces them as a ramp goes.
        self.pacer = Pacer(clock, lambda: self.settings.rate, self._open_one)
        self.replacements = Replacements(clock, self.start)
        self._serial = 0
        self._burst = 0
        # Insertion-ordered: iteration yields the oldest connection first.
        self._conns: dict[ClientConnection, None] = {}
        self.connecting = 0
        self.established = 0
        self._drained: list[defer.Deferred[None]] = []
        self.set_routes(routes)

    def _speak(self, settings: PoolSettings) -> None:
        """What the connections speak: the profile, and what the line parser compares."""
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

    def _timers(self, injected_dial: bool) -> TimerWheel | CallLaterTimers:
        """One wheel for every connection's timers on the fast path (and under a test's
        dial), else a reactor callLater each, as stock Twisted code would."""
        if self._loop is not None or injected_dial:
            return TimerWheel(self.clock, WHEEL_TICK, fire=self.timer, phase=self.rng.random() * WHEEL_TICK)
        return CallLaterTimers(self.clock, fire=self.timer)

    # -- public API --------------------------------------------------------
    def start(self, n: int) -> None:
        """Open `n` more connections, paced at `settings.rate` per second."""
        if n > 0:
            self.pacer.add(n)

    def stop(self, n: int) -> int:
        """Close `n` connections, not-yet-started ones first, then oldest first.

        Returns how many were taken away.
        """
        taken = self.pacer.take(n)
        if taken < n:
            taken += self.replacements.take(n - taken)
        if taken < n:
            victims = list(islice(self._live(), n - taken))
            for conn in victims:
                self.close(conn)
            taken += len(victims)
        if taken < n and self.dialer.connectors:
            dials = list(islice(self.dialer.connectors, n - taken))
            for connector in dials:
                self.dialer.stop(connector)
            taken += len(dials)
        return taken

    def count(self) -> int:
        """Established connections."""
        return self.established

    @property
    def pending(self) -> int:
        """Connections asked for and not started yet (waiting for the pacer)."""
        return self.pacer.pending

    @property
    def replacing(self) -> int:
        """Failed or lost connections waiting out the backoff before they are opened again."""
        return self.replacements.waiting

    def wanted(self) -> int:
        """Connections held, being opened, or waiting for their turn."""
        return self.established + self.connecting + self.pacer.pending + self.replacements.waiting

    def set_target(self, n: int) -> None:
        """Grow or shrink towards `n` held-or-coming connections."""
        delta = n - self.wanted()
        if delta > 0:
            self.start(delta)
        elif delta < 0:
            self.stop(-delta)

    def set_routes(self, routes: Sequence[Route]) -> None:
        """Replace the route table; connections already open keep their route
        (matched by tuple: `RouteTable.replace`)."""
        moved = self.spread.replace(routes)
        self.dialer.routes_moved(moved)
        hold = self.spread.hold
        for conn in self._conns:
            if 0 <= conn.route < len(moved):
                conn.route = hold(moved[conn.route])

    def close_all(self, timeout: float = 5.0) -> defer.Deferred[None]:
        """Stop everything; fires when every connection is gone (or after `timeout`)."""
        self.pacer.take(self.pacer.pending)
        self.replacements.cancel()
        for conn in list(self._conns):
            if conn.state not in (CLOSING, ABORTING):
                self.close(conn)
        for connector in list(self.dialer.connectors):
            self.dialer.stop(connector)
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

    # -- opening -------------------------------------------------------------
    def _open_one(self) -> None:
        """One connect the pacer let out: on the next route with room, or counted as refused."""
        idx = self.spread.take()
        if idx < 0:
            self.counters.fail("connect", "route_quota")
            return
        route = self.spread.routes[idx]
        if self._own_dial and not self.dialer.lean(route):
            self.dialer.connect_tcp(route, idx)
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

    def _replace_later(self) -> None:
        """Open one connection again once the current backoff has passed."""
        if self.settings.replace and self.spread.routes:
            self.replacements.one_more()

    # -- events from connections -------------------------------------------
    def connected(self, conn: ClientConnection) -> None:
        connectors = self.dialer.connectors
        if connectors:
            # Over Twisted's transport: the route its connector was given. (With TLS the
            # transport is the layer, and `_TLSDial` gave the route when TCP connected.)
            route = connectors.pop(getattr(conn.transport, "connector", None), None)
            if route is not None:
                conn.route = route
        if self.opens:
            # The session opens first; until then the connection is still connecting.
            conn.state = HANDSHAKING
            now = self.clock.seconds()
            conn.sent_at = now
            route_ = self.spread.get(conn.route)
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
        self.replacements.succeeded()
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
            stopped = self.dialer.failed(connector)
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
    def _live(self) -> Iterator[ClientConnection]:
        return (c for c in self._conns if c.state in (OPEN, CONNECTING, HANDSHAKING))

    def _forget(self, conn: ClientConnection) -> None:
        conn.state = CLOSED
        self.wheel.cancel(conn)
        conn.transport = None
        if self._conns.pop(conn, 0) is None:
            self.spread.release(conn.route)
        if not self._conns and self._drained:
            self._fire_drained()

    def _fire_drained(self) -> None:
        waiting, self._drained = self._drained, []
        for d in waiting:
            if not d.called:
                d.callback(None)
