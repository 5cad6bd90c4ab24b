"""TLS handshakes of a run, from its timeline: how long they took and how many a second.

Each timeline second keeps the merged histogram of the handshakes finished in it
(`handshake_hist`, the clients' time from TCP connected to TLS ready), so the run's
percentiles and its TLS connect rate are recomputed from the timeline alone, as RTTs are.
A run without TLS has none: every figure is None.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from connscale.metrics.histograms import rtt_summary_ms
from connscale.metrics.phases import STOP, merged_histogram, record_histogram

KEY = "handshake_hist"


def live(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The seconds before the run began to stop (a drain opens nothing)."""
    return [r for r in records if r.get("phase") != STOP] or list(records)


def handshake_ms(records: Sequence[Mapping[str, Any]]) -> dict[str, float | int | None]:
    """p50/p90/p99/max (ms) of every handshake the run finished, and their count."""
    hist = merged_histogram(live(records), KEY)
    return {**rtt_summary_ms(hist), "count": hist.get_total_count()}


def per_second(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """Handshakes finished in each timeline second."""
    counts = []
    for record in records:
        hist = record_histogram(record, KEY)
        counts.append(hist.get_total_count() if hist is not None else 0)
    return counts


def connect_rate(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """TLS connections made per second: the best second, and the mean over the seconds that made any."""
    busy = [n for n in per_second(live(records)) if n]
    if not busy:
        return {"max": None, "mean": None}
    return {"max": float(max(busy)), "mean": round(sum(busy) / len(busy), 1)}
