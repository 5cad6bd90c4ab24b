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
from typing import Any, Iterable, Mapping, Sequence

from hdrh.histogram import HdrHistogram

from connscale.metrics.histograms import decode_histogram, new_histogram, rtt_summary_ms

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


def record_histogram(record: Mapping[str, Any], key: str = "rtt_hist") -> HdrHistogram | None:
    """The RTT histogram of one timeline second (or the one under `key`: `handshake_hist`),
    None when the record has none."""
    text = record.get(key)
    if not text:
        return None
    return decode_histogram(str(text))


def merged_histogram(records: Iterable[Mapping[str, Any]], key: str = "rtt_hist") -> HdrHistogram:
    total = new_histogram()
    for record in records:
        hist = record_histogram(record, key)
        if hist is not None:
            total.add(hist)
    return total


def run_end(records: Sequence[Mapping[str, Any]]) -> int:
    """Index of the run's last second before it began to stop.

    Stopping drains connections and ends workers: what happens then (a
    server worker gone before its clients, pings unanswered) is not what
    the run measured, so "at the end" means before the `stop` phase.
    """
    for i in range(len(records) - 1, -1, -1):
        if records[i].get("phase") != STOP:
            return i
    return len(records) - 1


def _failure_total(record: Mapping[str, Any]) -> int:
    return int(record.get("client", {}).get("failure_total", 0)) + int(
        record.get("server", {}).get("failure_total", 0)
    )


def phase_table(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per phase, in order of first appearance: seconds, RTT percentiles, counts.

    `open` is the client side's open count at the phase's last second,
    `failures` the failures (both sides) that happened during it, and the
    RTT figures come from the phase's merged per-second histograms (None
    when no pong came back during the phase).
    """
    hists: dict[str, HdrHistogram] = {}
    rows: dict[str, dict[str, Any]] = {}
    previous_failures = 0
    for record in records:
        phase = str(record.get("phase") or "")
        row = rows.get(phase)
        if row is None:
            row = rows[phase] = {"seconds": 0, "failures": 0, "open": 0, "open_min": None, "rtt_samples": 0}
            hists[phase] = new_histogram()
        failures = _failure_total(record)
        row["seconds"] += 1
        row["failures"] += max(0, failures - previous_failures)
        previous_failures = failures
        opened = int(record.get("client", {}).get("open", 0))
        row["open"] = opened
        row["open_min"] = opened if row["open_min"] is None else min(row["open_min"], opened)
        hist = record_histogram(record)
        if hist is not None:
            hists[phase].add(hist)
    for phase, row in rows.items():
        hist = hists[phase]
        row["rtt_samples"] = hist.get_total_count()
        row["rtt_ms"] = rtt_summary_ms(hist)
    return rows


def rtt_by_phase(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    """RTT percentiles (ms) per phase: what the summary keeps of `phase_table`."""
    return {phase: row["rtt_ms"] for phase, row in phase_table(records).items() if phase}


def hold_rtt_ms(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """RTT over every hold second of the run (all plateaus and the final hold)."""
    return rtt_summary_ms(merged_histogram(r for r in records if is_hold(r.get("phase"))))


def run_rtt_ms(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """RTT over every second of the run before it began to stop, ramps included.

    From the per-second histograms, so the summary, the verdict line and the
    report agree; timelines from before `rtt_hist` fall back to the last
    cumulative `rtt_ms` they carry.
    """
    live = [r for r in records if r.get("phase") != STOP] or list(records)
    if any(r.get("rtt_hist") for r in live):
        return rtt_summary_ms(merged_histogram(live))
    return dict(live[-1].get("rtt_ms") or {}) if live else rtt_summary_ms(new_histogram())


def summary_fields(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What summary.json keeps of the phases: RTT per phase, of the final hold and of all holds.

    `rtt_final_hold_ms` is the latency the run's verdict is about; `rtt_ms`
    (every second before the stop, from the timeline, like the report's)
    mixes in every ramp's connect bursts.
    """
    table = phase_table(records)
    by_phase = {
        phase: {"seconds": row["seconds"], "samples": row["rtt_samples"], "open": row["open"], **row["rtt_ms"]}
        for phase, row in table.items() if phase
    }
    final = table.get(FINAL_HOLD)
    return {
        "rtt_ms": run_rtt_ms(records),
        "rtt_by_phase": by_phase,
        "rtt_final_hold_ms": dict(final["rtt_ms"]) if final else rtt_summary_ms(new_histogram()),
        "rtt_holds_ms": hold_rtt_ms(records),
    }
