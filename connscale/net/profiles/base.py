"""What every profile is: a session opening, a keepalive request, a thin parser.

The parser is a `ClientConnection` subclass (`ProfileConnection`): it reads the
server's bytes and forwards events to its pool, which owns every decision:

    pool.session_open(conn)              the session opened (handshake done)
    pool.pong(conn)                      the keepalive was answered
    pool.refused(conn, cause, words)     the server said no, in its own words
    pool.bad_reply(conn, kind)           bytes that are not this protocol
    pool.counters.say(key, words)        something the server said worth keeping

A profile with `opens = True` sends `opening(conn)` when TCP connects; the
connection counts as connecting (not open) until the parser calls
`session_open`, and what fails before that is phase `connect` (a 503 at the
upgrade: `connect:http_503`; a CONNACK refusal: `connect:connack_3`).

Every parser bounds what it buffers by `options.max_reply` (a reply larger is
`too_large`), and names a TLS record where plain text was expected
(`tls_reply`), so a wrong server fails fast with a named cause and bounded
memory, never a traceback.
"""

from __future__ import annotations

from typing import Any, ClassVar

from connscale.config.target import ProfileOptions
from connscale.net.wire import ClientConnection

#: A TLS record's first bytes (handshake 0x16 or alert 0x15, version 3.x): a server
#: that speaks TLS answering a plain-text client.
TLS_RECORD_STARTS = (b"\x15\x03", b"\x16\x03")


class ProfileError(ValueError):
    """A profile cannot be made from these options (one line)."""


def is_tls(data: bytes) -> bool:
    return data[:2] in TLS_RECORD_STARTS


def undecided(data: bytes) -> bool:
    """One byte that may still become a TLS record: wait for the next before naming it."""
    return len(data) < 2 and data[:1] in (b"\x15", b"\x16")


class ProfileConnection(ClientConnection):
    """A client connection whose parser keeps a little state of its own.

    `serial` numbers the connection within its pool (MQTT client ids, `{n}`);
    `stage`/`need`/`want` are the parser's state, read by the profile's own
    methods only."""

    __slots__ = ("need", "serial", "stage", "want")

    def __init__(self, pool: Any, route: int) -> None:
        super().__init__(pool, route)
        self.serial = pool.next_serial() if hasattr(pool, "next_serial") else 0
        self.stage = 0
        self.need = 0
        self.want: Any = None

    @property
    def alive(self) -> bool:
        """Still worth parsing for: not closing (a forwarded event may have closed it)."""
        return self.state in (ClientConnection.OPEN, ClientConnection.HANDSHAKING)

    def overflow(self, data: bytes) -> bool:
        """Buffer `data`; True (and the connection failed) when a reply outgrows max_reply."""
        max_reply = self.pool.profile.options.max_reply
        if len(self.buf) + len(data) > max_reply:
            head, self.buf = self.buf or data, b""
            if is_tls(head):
                self.foreign(head)
            else:
                self.too_large()
            return True
        self.buf += data
        return False

    def too_large(self) -> None:
        """A reply larger than max_reply: cut off, and said why."""
        self.buf = b""
        max_reply = self.pool.profile.options.max_reply
        self.pool.counters.say("too_large", f"more than {max_reply:,} bytes in one reply (client.max_reply)")
        self.pool.bad_reply(self, "too_large")

    def foreign(self, data: bytes) -> None:
        """Bytes that are not this protocol: a TLS server, or another protocol altogether."""
        self.buf = b""
        if is_tls(data):
            self.pool.counters.say("tls_reply", f"a TLS record (bytes {data[:3].hex(' ')}) where {self.pool.profile.name} "
                                   "was expected")
            self.pool.bad_reply(self, "tls_reply")
        else:
            self.pool.counters.say("unexpected_reply", data[:80])  # what it was instead: "HTTP/1.1 400 Bad Request"
            self.pool.bad_reply(self, "unexpected_reply")


class Profile:
    """One protocol, bound to its options; one per pool."""

    name: ClassVar[str] = ""
    #: The parser the pool's factory builds for every connection.
    connection: ClassVar[type[ClientConnection]] = ClientConnection
    #: A session opening before the first keepalive (handshake, CONNECT, upgrade).
    opens: ClassVar[bool] = False
    #: The keepalive request when it is the same bytes for every connection (else `ping_for`).
    ping: bytes | None = None

    def __init__(self, options: ProfileOptions, interval: float, timeout: float) -> None:
        self.options = options
        self.interval = interval
        self.timeout = timeout

    def opening(self, conn: Any, host: str, port: int) -> bytes:
        """What opens a session on `conn` (to `host:port`, the route's address)."""
        return b""

    def ping_for(self, conn: Any) -> bytes:
        """This connection's keepalive request, when `ping` is None."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line for logs: what this profile sends."""
        return self.name
