"""Live counters and the bounded failure taxonomy, shared by both sides.

One `Counters` object per process: connections bump plain integer slots on it
instead of keeping statistics of their own, which keeps per-connection memory
flat and lets a worker ship its whole state as one small `Snapshot`.
"""

from __future__ import annotations

import errno

from twisted.internet import error as terror
from twisted.python.failure import Failure

from connscale.metrics.buckets import RttBuckets
from connscale.metrics.snapshot import Snapshot

PHASES: tuple[str, ...] = ("connect", "first_ping", "steady")

#: Causes that are not errno names. Together with `errno.errorcode` this is
#: the whole vocabulary, so a `fail.<phase>.<cause>` key space stays bounded.
APP_CAUSES: frozenset[str] = frozenset(
    {
        "no_answer_from_server",
        "closed_by_peer",
        "protocol_error",
        "worker_lost",
        "route_quota",
        "unknown",
    }
) | frozenset(
    # What a protocol profile's server said (net/profiles): bounded families, so a
    # server's free text never becomes a cause of its own (its words go to `said`).
    {"handshake_timeout", "redis_maxclients", "redis_noauth", "redis_loading", "redis_error",
     "http_connection_close", "http_bad_status", "ws_bad_accept", "ws_close_other", "connack_other",
     "expect_mismatch"}
    | {f"http_{code}" for code in range(400, 600)}
    | {f"ws_close_{code}" for code in range(1000, 1016)}
    | {f"connack_{code}" for code in range(1, 6)}
)

#: Causes of a failed TLS handshake (net/tls.py names them; phase `connect` on both sides),
#: and `tls_error` for a TLS failure after it. Part of the bounded vocabulary like APP_CAUSES.
TLS_CAUSES: frozenset[str] = frozenset(
    {
        "tls_unknown_ca",          # the peer's certificate chains to no CA we trust
        "tls_hostname_mismatch",   # ... names neither server_name nor the address dialled
        "tls_cert_expired",        # ... is past its notAfter
        "tls_cert_not_yet_valid",  # ... is before its notBefore
        "tls_cert_invalid",        # ... fails verification otherwise
        "tls_cert_rejected",       # the peer refused our certificate, or wanted one we did not send
        "tls_protocol_version",    # no TLS version both ends accept
        "tls_handshake_failure",   # no cipher, group or signature both ends accept
        "tls_peer_not_tls",        # the peer answered with bytes that are not TLS (a plain-text server or client)
        "tls_closed_in_handshake", # the peer closed the connection before the handshake finished
        "tls_handshake_timeout",   # the handshake did not finish within client.tls.handshake_timeout
        "tls_error",               # any other TLS failure, during or after the handshake
    }
)


class NamedFailure(Exception):
    """A failure whose cause is already a name of the bounded set (`TLS_CAUSES`)."""

    def __init__(self, cause: str, detail: str = "") -> None:
        super().__init__(detail or cause)
        self.cause = cause


#: Causes whose server's words are kept (a sample each), and how long one sample may be.
MAX_SAID = 32
MAX_SAID_LEN = 200
#: The `said` entry that is no cause: the server's own name for itself (HTTP's `Server:`).
SERVER_HEADER = "server"

#: Server-side protocol violations, counted by kind.
PROTOCOL_KINDS: tuple[str, ...] = ("unknown_line", "line_too_long", "flood", "unexpected_pong",
                                   # a profile's reply that is not its protocol, too large, a bad frame,
                                   # or TLS records where plain text was expected
                                   "unexpected_reply", "too_large", "bad_frame", "tls_reply",
                                   # connscale's WebSocket server: an upgrade request it cannot take
                                   "bad_handshake")


def errno_cause(number: int) -> str:
    """The symbolic name of an errno, e.g. 111 -> 'ECONNREFUSED'."""
    return errno.errorcode.get(number, f"ERRNO_{number}")


def classify(reason: Failure | BaseException) -> str:
    """Map a connection failure to a cause from the bounded set.

    Never returns a message: messages carry addresses and ports, which would
    make every failure its own class.
    """
    exc = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exc, NamedFailure):
        return exc.cause if exc.cause in TLS_CAUSES or exc.cause in APP_CAUSES else "unknown"
    if isinstance(exc, terror.ConnectionDone):
        return "closed_by_peer"
    if isinstance(exc, terror.ConnectionLost):
        # connscale's transports keep the errno of a failed read or write;
        # Twisted's drop it, and on Linux a non-clean loss of an established
        # connection is a reset in practice.
        number = getattr(exc, "errno", None)
        return errno_cause(number) if isinstance(number, int) else "ECONNRESET"
    if isinstance(exc, terror.ConnectError):
        if isinstance(exc.osError, int):
            return errno_cause(exc.osError)
        if isinstance(exc, terror.ConnectionRefusedError):
            return "ECONNREFUSED"
        if isinstance(exc, (terror.TCPTimedOutError, terror.TimeoutError)):
            return "ETIMEDOUT"
        return "unknown"
    if isinstance(exc, OSError) and isinstance(exc.errno, int):
        return errno_cause(exc.errno)
    return "unknown"


def printable(words: str | bytes) -> str:
    """A server's words as one bounded line of printable text."""
    if isinstance(words, bytes):
        words = words.decode("utf-8", "replace")
    line = "".join(ch if ch.isprintable() else " " for ch in words[: MAX_SAID_LEN * 2]).strip()
    return line[:MAX_SAID_LEN]


class Counters:
    """The live, process-wide counters. Hot paths touch plain attributes."""

    __slots__ = (
        "open",
        "opened",
        "closed",
        "pings",
        "pongs",
        "skipped",
        "failures",
        "protocol",
        "rtt",
        "handshake",
        "resumed",
        "said",
    )

    def __init__(self) -> None:
        self.open = 0
        self.opened = 0
        self.closed = 0
        self.pings = 0
        self.pongs = 0
        self.skipped = 0
        self.failures: dict[tuple[str, str], int] = {}
        self.protocol: dict[str, int] = {}
        #: cause -> the server's own words for it (a status line, an error reply), one sample each.
        self.said: dict[str, str] = {}
        # Holds RTTs since the last snapshot; the cumulative view lives in
        # whoever merges snapshots, so a worker never grows a second copy.
        self.rtt = RttBuckets()
        # TLS handshakes since the last snapshot (µs, the RTT buckets' layout), and
        # how many of all of them resumed a session.
        self.handshake = RttBuckets()
        self.resumed = 0

    def fail(self, phase: str, cause: str) -> None:
        key = (phase, cause)
        self.failures[key] = self.failures.get(key, 0) + 1

    def violation(self, kind: str, phase: str = "steady") -> None:
        self.protocol[kind] = self.protocol.get(kind, 0) + 1
        self.fail(phase, "protocol_error")

    def say(self, cause: str, words: str | bytes) -> None:
        """Keep what the server said for `cause` (the first sample; bounded and printable)."""
        if cause in self.said or len(self.said) >= MAX_SAID:
            return
        self.said[cause] = printable(words)

    def snapshot(self, reset_rtt: bool = True) -> "Snapshot":
        """Cumulative counts plus the RTTs recorded since the last call."""
        snap = Snapshot(
            open=self.open,
            opened=self.opened,
            closed=self.closed,
            pings=self.pings,
            pongs=self.pongs,
            skipped=self.skipped,
            failures={f"{p}:{c}": n for (p, c), n in self.failures.items()},
            protocol=dict(self.protocol),
            said=dict(self.said),
            rtt=self.rtt.encode() if self.rtt else "",
            handshake=self.handshake.encode() if self.handshake else "",
            resumed=self.resumed,
        )
        if reset_rtt:
            self.rtt.reset()
            self.handshake.reset()
        return snap
