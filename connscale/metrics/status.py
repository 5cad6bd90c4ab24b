"""The periodic `key=value` status line both commands log.

Keys are stable (see README, "Status lines"). RTT percentiles cover the
interval since the previous line, so a latency spike is visible when it
happens instead of being averaged away by hours of history.
"""

from __future__ import annotations

from typing import Callable, Iterable

from hdrh.histogram import HdrHistogram
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from connscale.metrics.histograms import RttAccumulator, rtt_summary_ms
from connscale.metrics.snapshot import Snapshot

log = Logger(namespace="connscale.status")


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
        fields += [("rtt_p50_ms", _ms(summary.p50)), ("rtt_p99_ms", _ms(summary.p99))]
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


class StatusService(Service):
    """Every `interval` seconds: take a snapshot, log its status line."""

    def __init__(
        self,
        clock: IReactorTime,
        interval: float,
        snapshot: Callable[[], Snapshot],
        with_rtt: bool,
        emit: Callable[[str], None] | None = None,
        final: bool = True,
    ) -> None:
        self.final = final
        self.clock = clock
        self.interval = interval
        self.snapshot = snapshot
        self.with_rtt = with_rtt
        self.rtt = RttAccumulator()
        self.emit = emit or (lambda line: log.info("{status}", status=line))
        self._loop: LoopingCall | None = None
        self.last_line = ""

    def tick(self) -> str:
        snap = self.snapshot()
        self.rtt.add(snap.rtt)
        window = self.rtt.take_window() if self.with_rtt else None
        self.last_line = format_status(status_fields(snap, window))
        self.emit(self.last_line)
        return self.last_line

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        # One last line, so a run's final numbers are in the log. Owners that
        # drain connections on the way down pass final=False and tick after.
        if self.final:
            self.tick()
