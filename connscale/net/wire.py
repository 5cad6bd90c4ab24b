"""Wire protocols: thin parsers that forward events to a shared state object.

Two framings:
  line  `Ping\\n` -> `Pong\\n`; a trailing `\\r` is accepted and mirrored.
  raw   the original Erlang tool's bytes: `Ping` -> `Pong`, no delimiter.

Server protocols report to a `ServerState` (counters plus limits); the client
protocol is driven by `pool.ConnectionPool`, which owns all policy. No
per-connection statistics, timers or closures live here.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from connscale.compat.lines import PresizedLineReceiver
from connscale.config.target import ProfileOptions
from connscale.metrics.counters import Counters, classify

FRAMINGS = ("line", "raw")

PING = b"Ping"
PONG = b"Pong"

# A well-behaved peer has one ping outstanding; this many complete messages in
# one read can only be a flood.
FLOOD_MESSAGES = 16


class ServerState:
    """Everything the server protocols share: counters and limits."""

    def __init__(self, counters: Counters, max_line: int = 1024) -> None:
        self.counters = counters
        self.max_line = max_line

    def opened(self) -> None:
        c = self.counters
        c.open += 1
        c.opened += 1

    def closed(self, reason: Failure, pinged: bool, violated: bool) -> None:
        c = self.counters
        c.open -= 1
        c.closed += 1
        if violated:
            return  # already counted as a protocol error
        cause = classify(reason)
        if cause != "closed_by_peer":
            # A peer that says goodbye with FIN is a client stopping a
            # connection: normal. Anything else is a failure seen by the server.
            c.fail("steady" if pinged else "first_ping", cause)


class _ServerMixin:
    """Counting and clean termination shared by both server framings."""

    state: ServerState
    # Set by makeConnection before any event reaches the mixin, so never None here.
    transport: ITransport
    pinged = False
    violated = False

    def connectionMade(self) -> None:
        self.state.opened()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.state.closed(reason, self.pinged, self.violated)

    def violation(self, kind: str) -> None:
        if self.violated:
            return
        self.violated = True
        # Garbage before any ping is a peer that never spoke our protocol.
        self.state.counters.violation(kind, "steady" if self.pinged else "first_ping")
        # Flush what we owe and close with FIN; reading stops, so whatever the
        # peer still pushes is dropped by the kernel, not buffered here.
        self.transport.loseConnection()


class LineServerProtocol(_ServerMixin, PresizedLineReceiver):
    """The brief's `LineReceiver`: `Ping` lines in, `Pong` lines out."""

    delimiter = b"\n"
    transport: ITransport  # the mixin's, restated: the class's own line settles the two bases

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state
        self.MAX_LENGTH = state.max_line

    def dataReceived(self, data: bytes) -> None:
        if data == b"Ping\n" and not self.pending_line:
            # The one message a healthy client sends, whole in one read.
            self.transport.write(b"Pong\n")
            self.pinged = True
            c = self.state.counters
            c.pings += 1
            c.pongs += 1
            return
        if data.count(b"\n") > FLOOD_MESSAGES:
            self.violation("flood")
            return
        LineReceiver.dataReceived(self, data)

    def lineReceived(self, line: bytes) -> None:
        if line == PING:
            self.transport.write(b"Pong\n")
        elif line == b"Ping\r":
            self.transport.write(b"Pong\r\n")
        else:
            self.violation("unknown_line")
            return
        self.pinged = True
        self.state.counters.pings += 1
        self.state.counters.pongs += 1

    def lineLengthExceeded(self, line: bytes) -> None:
        self.violation("line_too_long")


class RawServerProtocol(_ServerMixin, Protocol):
    """`Ping` in, `Pong` out, four bytes each; partial reads are buffered."""

    transport: ITransport  # the mixin's, restated: the class's own line settles the two bases

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        if self.violated:
            return
        if self.buf:
            data = self.buf + data
        n, rest = divmod(len(data), 4)
        if n > FLOOD_MESSAGES:
            self.violation("flood")
            return
        if data[: 4 * n] != PING * n or (rest and not PING.startswith(data[4 * n :])):
            self.violation("unknown_line")
            return
        self.buf = data[4 * n :]
        if n:
            self.transport.write(PONG * n)
            self.pinged = True
            c = self.state.counters
            c.pings += n
            c.pongs += n


SERVER_PROTOCOLS = {"line": LineServerProtocol, "raw": RawServerProtocol}


class ProfileView(TypingProtocol):
    """What a connection reads of its pool's profile (net/profiles/base.Profile, which imports this module)."""

    @property
    def name(self) -> str: ...
    @property
    def options(self) -> ProfileOptions: ...


class PoolHooks(TypingProtocol):
    """What a client connection reads and calls on its pool (see pool.ConnectionPool)."""

    framing: str
    reply: bytes
    counters: Counters

    @property
    def profile(self) -> ProfileView: ...

    def connected(self, conn: ClientConnection) -> None: ...
    def pong(self, conn: ClientConnection) -> None: ...
    def session_open(self, conn: ClientConnection) -> None: ...
    def refused(self, conn: ClientConnection, cause: str, words: bytes | str) -> None: ...
    def bad_reply(self, conn: ClientConnection, kind: str) -> None: ...
    def lost(self, conn: ClientConnection, reason: Failure) -> None: ...
    def timer(self, conn: ClientConnection, now: float) -> None: ...


class ClientConnection(Protocol):
    """One client connection: the protocol a `PingClientFactory` builds.

    Everything else is a few slots; the pool (which owns all policy: pings,
    timeouts, classification) reads and writes them directly. It works over
    connscale's lean `ClientTransport` and over any Twisted transport alike
    (`reactor.connectTCP(host, port, pool.factory)`).
    """

    __slots__ = (
        "answered",
        "buf",
        "connected",
        "due",
        "next_ping",
        "pool",
        "route",
        "sent_at",
        "state",
        "transport",
    )

    # The states and their moves (the pool makes every one of them):
    #   CONNECTING  -> OPEN (connected; a profile without a session opening)
    #               -> HANDSHAKING (connected; the profile's opening was sent)
    #               -> CLOSING (stopped by the pool) | CLOSED (the connect failed)
    #   HANDSHAKING -> OPEN (the profile says the session opened)
    #               -> ABORTING (closed by the pool) | CLOSED (lost before it opened)
    #   OPEN        -> CLOSING (closed by the pool) | CLOSED (lost)
    #   CLOSING, ABORTING -> CLOSED
    # HANDSHAKING and ABORTING count as connecting, OPEN and CLOSING as established.
    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3
    #: Connected, its profile's session opening under way (net/profiles: an upgrade,
    #: a CONNECT); counted as connecting until the profile says the session is open.
    HANDSHAKING = 4
    #: Closed by the pool before its session opened: connecting until it is gone.
    ABORTING = 5

    def __init__(self, pool: PoolHooks, route: int) -> None:
        self.pool = pool
        self.transport = None
        self.connected = 0
        self.route = route
        self.due = -1
        self.sent_at = 0.0  # 0.0: no ping outstanding
        self.next_ping = 0.0
        self.answered = False  # has any pong arrived (phase first_ping vs steady)
        self.state = ClientConnection.CONNECTING
        self.buf = b""

    # -- protocol interface --
    def connectionMade(self) -> None:
        self.state = ClientConnection.OPEN
        self.pool.connected(self)

    def dataReceived(self, data: bytes) -> None:
        pool = self.pool
        if not self.buf and data == pool.reply:
            pool.pong(self)
            return
        data = self.buf + data
        reply = pool.reply
        if pool.framing == "raw":
            while len(data) >= 4:
                if data[:4] != PONG:
                    pool.bad_reply(self, "unknown_line")
                    return
                data = data[4:]
                pool.pong(self)
            if data and not PONG.startswith(data):
                pool.bad_reply(self, "unknown_line")
                return
        else:
            while True:
                end = data.find(b"\n")
                if end < 0:
                    break
                line, data = data[:end], data[end + 1 :]
                if line not in (PONG, b"Pong\r"):
                    pool.bad_reply(self, "unknown_line")
                    return
                pool.pong(self)
            if len(data) > len(reply) + 1:
                pool.bad_reply(self, "line_too_long")
                return
        self.buf = data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.state == ClientConnection.CLOSED:
            return
        self.transport = None  # break the transport <-> protocol cycle
        self.pool.lost(self, reason)

    def on_timer(self, now: float) -> None:
        self.pool.timer(self, now)
