"""Counters, RTT histograms and the bounded failure taxonomy, shared by both sides.

One `Counters` object per process: connections bump plain integer slots on it
instead of keeping statistics of their own, which keeps per-connection memory
flat and lets a worker ship its whole state as one small `Snapshot`.
"""

from __future__ import annotations

import errno
from typing import Iterable, Mapping

import attrs
from hdrh.histogram import HdrHistogram
from twisted.internet import error as terror
from twisted.python.failure import Failure

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
)

#: Server-side protocol violations, counted by kind.
PROTOCOL_KINDS: tuple[str, ...] = ("unknown_line", "line_too_long", "flood", "unexpected_pong")

# RTTs are recorded in microseconds: 1 us .. 10 min at 2 significant digits
# (about 1 % resolution, a few KiB per histogram).
_RTT_LOW_US = 1
_RTT_HIGH_US = 600_000_000
_RTT_DIGITS = 2


def errno_cause(number: int) -> str:
    """The symbolic name of an errno, e.g. 111 -> 'ECONNREFUSED'."""
    return errno.errorcode.get(number, f"ERRNO_{number}")


def classify(reason: Failure | BaseException) -> str:
    """Map a connection failure to a cause from the bounded set.

    Never returns a message: messages carry addresses and ports, which would
    make every failure its own class.
    """
    exc = reason.value if isinstance(reason, Failure) else reason
    if isinstance(exc, terror.ConnectionDone):
        return "closed_by_peer"
    if isinstance(exc, terror.ConnectionLost):
        # Twisted drops the errno of a failed read; on Linux a non-clean loss
        # of an established connection is a reset in practice.
        return "ECONNRESET"
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


def new_histogram() -> HdrHistogram:
    return HdrHistogram(_RTT_LOW_US, _RTT_HIGH_US, _RTT_DIGITS)


def encode_histogram(hist: HdrHistogram) -> str:
    """A compact text form that crosses PB and JSON unchanged."""
    raw = hist.encode()
    return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)


def decode_histogram(text: str) -> HdrHistogram:
    hist = new_histogram()
    if text:
        hist.decode_and_add(text)
    return hist


def rtt_summary_ms(hist: HdrHistogram) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds, None when nothing was recorded."""
    if hist.get_total_count() == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    pct = hist.get_percentile_to_value_dict([50, 90, 99])
    return {
        "p50": pct[50] / 1000.0,
        "p90": pct[90] / 1000.0,
        "p99": pct[99] / 1000.0,
        "max": hist.get_max_value() / 1000.0,
    }


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
        # Holds RTTs since the last snapshot; the cumulative view lives in
        # whoever merges snapshots, so a worker never grows a second copy.
        self.rtt = new_histogram()

    def fail(self, phase: str, cause: str) -> None:
        key = (phase, cause)
        self.failures[key] = self.failures.get(key, 0) + 1

    def violation(self, kind: str) -> None:
        self.protocol[kind] = self.protocol.get(kind, 0) + 1
        self.fail("steady", "protocol_error")

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
            rtt=encode_histogram(self.rtt) if self.rtt.get_total_count() else "",
        )
        if reset_rtt:
            self.rtt.reset()
        return snap


@attrs.frozen
class Snapshot:
    """What a process reports: cumulative counters and an interval histogram.

    Counters are cumulative so a lost or duplicated report never skews a sum;
    only the histogram is an interval delta (histograms add, percentiles don't).
    Failures are keyed "phase:cause" so the record is plain JSON and PB data.
    """

    open: int = 0
    opened: int = 0
    closed: int = 0
    pings: int = 0
    pongs: int = 0
    skipped: int = 0
    failures: Mapping[str, int] = attrs.field(factory=dict)
    protocol: Mapping[str, int] = attrs.field(factory=dict)
    rtt: str = ""

    @property
    def failure_total(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, object]:
        """Plain dicts and numbers: fit for PB and JSON as they are."""
        return attrs.asdict(self)

    def counts(self) -> dict[str, object]:
        """`to_dict` without the histogram, plus the failure total: what
        reports and the timeline show of a snapshot."""
        data = self.to_dict()
        del data["rtt"]
        data["failure_total"] = self.failure_total
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Snapshot":
        fields = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})  # type: ignore[arg-type]


def sum_snapshots(snaps: Iterable[Snapshot]) -> Snapshot:
    """Add counters of several processes; the histogram fields are dropped
    (merge those with `RttAccumulator`)."""
    total: dict[str, int] = {"open": 0, "opened": 0, "closed": 0, "pings": 0, "pongs": 0, "skipped": 0}
    failures: dict[str, int] = {}
    protocol: dict[str, int] = {}
    for s in snaps:
        for k in total:
            total[k] += getattr(s, k)
        for k, n in s.failures.items():
            failures[k] = failures.get(k, 0) + n
        for k, n in s.protocol.items():
            protocol[k] = protocol.get(k, 0) + n
    return Snapshot(failures=failures, protocol=protocol, **total)


class RttAccumulator:
    """Cumulative and windowed RTT views built from interval histograms."""

    def __init__(self) -> None:
        self.total = new_histogram()
        self.window = new_histogram()

    def add(self, encoded: str) -> None:
        if not encoded:
            return
        hist = decode_histogram(encoded)
        self.total.add(hist)
        self.window.add(hist)

    def add_histogram(self, hist: HdrHistogram) -> None:
        if hist.get_total_count():
            self.total.add(hist)
            self.window.add(hist)

    def take_window(self) -> HdrHistogram:
        window, self.window = self.window, new_histogram()
        return window


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def status_fields(snap: Snapshot, rtt: HdrHistogram | None) -> list[tuple[str, str]]:
    """The stable key=value pairs of a status line (see README, "Status lines")."""
    fields = [
        ("open", str(snap.open)),
        ("opened", str(snap.opened)),
        ("closed", str(snap.closed)),
        ("pings", str(snap.pings)),
        ("pongs", str(snap.pongs)),
    ]
    if rtt is not None:
        summary = rtt_summary_ms(rtt)
        fields += [("rtt_p50_ms", _ms(summary["p50"])), ("rtt_p99_ms", _ms(summary["p99"]))]
    fields.append(("failures", str(snap.failure_total)))
    for key in sorted(snap.failures):
        if snap.failures[key]:
            phase, cause = key.split(":", 1)
            fields.append((f"fail.{phase}.{cause}", str(snap.failures[key])))
    for kind in sorted(snap.protocol):
        if snap.protocol[kind]:
            fields.append((f"proto.{kind}", str(snap.protocol[kind])))
    return fields


def format_status(fields: Iterable[tuple[str, str]]) -> str:
    return " ".join(f"{k}={v}" for k, v in fields)


def parse_status(line: str) -> dict[str, str]:
    """Inverse of `format_status`, for scripts and tests."""
    out: dict[str, str] = {}
    for token in line.split():
        if "=" in token:
            key, _, value = token.partition("=")
            out[key] = value
    return out
