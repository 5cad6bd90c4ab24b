"""Phases of a run, and RTT percentiles per phase.

A run ramps in steps and holds after each; a connect burst makes RTT spike
for reasons that say nothing about holding connections. So the driver names
its phase (`setup`, `ramp:K`, `hold:K`, `final_hold`, `stop`), the controller
stamps every timeline second with it, and percentiles are taken per phase
from the per-second histograms (`rtt_hist`) instead of from one histogram
that mixes ramps and holds.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Sequence

import attrs
from hdrh.histogram import HdrHistogram

from connscale.records.base import Record, field, integer
from connscale.metrics.histograms import MS, Percentiles, new_histogram, rtt_summary_ms
from connscale.metrics.records import Stats

SETUP = "setup"
FINAL_HOLD = "final_hold"
STOP = "stop"

_NAME = re.compile(r"^[A-Za-z0-9_:]{0,32}$")

#: Phases during which the load is meant to be steady.
_HOLD_PREFIXES = ("hold", "final_hold", "plateau")


def ramp(step: int) -> str:
    return f"ramp:{step}"


def hold(step: int) -> str:
    return f"hold:{step}"


def phase_name_ok(name: str) -> bool:
    """Short and from a small alphabet: a phase becomes a label and a table row."""
    return bool(_NAME.match(name))


def is_hold(phase: str | None) -> bool:
    return bool(phase) and str(phase).split(":", 1)[0] in _HOLD_PREFIXES


def window_phase(seen: Sequence[str]) -> str:
    """The phase a second is counted in, given every phase in force during it.

    A second that saw no change has that phase. One that saw a change belongs
    to the last non-hold phase it saw, so a hold's seconds are whole seconds
    of holding: never the head of the next ramp, the tail of the previous
    one or the start of the drain.
    """
    if not seen:
        return ""
    if len(set(seen)) == 1:
        return seen[0]
    busy = [p for p in seen if not is_hold(p)]
    return busy[-1] if busy else seen[-1]


def merged_histogram(records: Iterable[Stats],
                     histogram: Callable[[Stats], HdrHistogram | None] = Stats.histogram) -> HdrHistogram:
    """The sum of the records' per-second histograms: their RTTs, or what `histogram` picks
    (`Stats.handshake_histogram`: their TLS handshakes)."""
    total = new_histogram()
    for record in records:
        hist = histogram(record)
        if hist is not None:
            total.add(hist)
    return total


@attrs.frozen
class PhaseRow:
    """One phase of a timeline: its seconds, failures, counts and RTT (`phase_table`)."""

    seconds: int
    #: Failures (both sides) that happened during it.
    failures: int
    #: The clients' open count at its last second, and the lowest during it.
    open: int
    open_min: int
    rtt_samples: int
    rtt_ms: Percentiles


@attrs.frozen
class PhaseRtt(Record):
    """What summary.json keeps of a phase (`rtt_by_phase`): its RTT and how much it saw."""

    seconds: int = field(integer(0, 1 << 40), default=0, doc="seconds of the timeline in the phase")
    samples: int = field(integer(0, 1 << 62), default=0, doc="pongs timed in it")
    open: int = field(integer(0, 1 << 62), default=0, doc="clients' open connections at its end")
    p50: float | None = field(MS, default=None, doc="median RTT, ms")
    p90: float | None = field(MS, default=None, doc="90th percentile, ms")
    p99: float | None = field(MS, default=None, doc="99th percentile, ms")
    max: float | None = field(MS, default=None, doc="the slowest, ms")

    @property
    def rtt(self) -> Percentiles:
        return Percentiles(self.p50, self.p90, self.p99, self.max)


def phase_table(records: Sequence[Stats]) -> dict[str, PhaseRow]:
    """Per phase, in order of first appearance: seconds, RTT percentiles, counts.

    The RTT figures come from the phase's merged per-second histograms (None
    when no pong came back during the phase).
    """
    hists: dict[str, HdrHistogram] = {}
    rows: dict[str, dict[str, int]] = {}
    previous_failures = 0
    for record in records:
        row = rows.get(record.phase)
        if row is None:
            row = rows[record.phase] = {"seconds": 0, "failures": 0, "open": 0, "open_min": record.client.open}
            hists[record.phase] = new_histogram()
        failures = record.failure_total
        row["seconds"] += 1
        row["failures"] += max(0, failures - previous_failures)
        previous_failures = failures
        row["open"] = record.client.open
        row["open_min"] = min(row["open_min"], record.client.open)
        hist = record.histogram()
        if hist is not None:
            hists[record.phase].add(hist)
    return {phase: PhaseRow(rtt_samples=hists[phase].get_total_count(), rtt_ms=rtt_summary_ms(hists[phase]), **row)
            for phase, row in rows.items()}


def rtt_by_phase(records: Sequence[Stats]) -> dict[str, Percentiles]:
    """RTT percentiles (ms) per phase: what the summary keeps of `phase_table`."""
    return {phase: row.rtt_ms for phase, row in phase_table(records).items() if phase}


def hold_rtt_ms(records: Sequence[Stats]) -> Percentiles:
    """RTT over every hold second of the run (all plateaus and the final hold)."""
    return rtt_summary_ms(merged_histogram(r for r in records if is_hold(r.phase)))


def run_rtt_ms(records: Sequence[Stats]) -> Percentiles:
    """RTT over every second of the run before it began to stop, ramps included.

    From the per-second histograms, so the summary, the verdict line and the
    report agree; timelines from before `rtt_hist` fall back to the last
    cumulative `rtt_ms` they carry.
    """
    live = [r for r in records if r.phase != STOP] or list(records)
    if any(r.rtt_hist for r in live):
        return rtt_summary_ms(merged_histogram(live))
    return live[-1].rtt_ms if live else Percentiles()


@attrs.frozen
class PhaseFigures:
    """What summary.json keeps of the phases: RTT per phase, of the final hold and of all holds.

    `rtt_final_hold_ms` is the latency the run's verdict is about; `rtt_ms`
    (every second before the stop, from the timeline, like the report's)
    mixes in every ramp's connect bursts.
    """

    rtt_ms: Percentiles
    rtt_by_phase: dict[str, PhaseRtt]
    rtt_final_hold_ms: Percentiles
    rtt_holds_ms: Percentiles


def summary_fields(records: Sequence[Stats]) -> PhaseFigures:
    table = phase_table(records)
    by_phase = {
        phase: PhaseRtt(row.seconds, row.rtt_samples, row.open, row.rtt_ms.p50, row.rtt_ms.p90, row.rtt_ms.p99,
                        row.rtt_ms.max)
        for phase, row in table.items() if phase
    }
    final = table.get(FINAL_HOLD)
    return PhaseFigures(
        rtt_ms=run_rtt_ms(records),
        rtt_by_phase=by_phase,
        rtt_final_hold_ms=final.rtt_ms if final else Percentiles(),
        rtt_holds_ms=hold_rtt_ms(records),
    )
