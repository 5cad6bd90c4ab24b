"""TLS handshakes of a run, from its timeline: how long they took and how many a second.

Each timeline second keeps the merged histogram of the handshakes finished in it
(`Stats.handshake_hist`, the clients' time from TCP connected to TLS ready), so the
run's percentiles and its TLS connect rate are recomputed from the timeline alone, as
RTTs are. A run without TLS has none: every figure is None. The figures are records
(`summary.json`'s `handshake_ms` and `tls_connect_rate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from connscale.records.base import Record, field, integer, number, optional
from connscale.metrics.histograms import Percentiles, rtt_summary_ms
from connscale.metrics.phases import STOP, merged_histogram
from connscale.metrics.records import Stats


@attrs.frozen
class HandshakeMs(Percentiles):
    """Every TLS handshake a run finished: percentiles (ms) and how many (all None without TLS)."""

    count: int = field(integer(0, 1 << 62), default=0, doc="handshakes finished")


@attrs.frozen
class ConnectRate(Record):
    """TLS connections made per second (handshakes finished): None without TLS."""

    max: float | None = field(optional(number(0, 1e12)), default=None, doc="the best second")
    mean: float | None = field(optional(number(0, 1e12)), default=None,
                               doc="the mean over the seconds that made any")


def live(records: Sequence[Stats]) -> list[Stats]:
    """The seconds before the run began to stop (a drain opens nothing)."""
    return [r for r in records if r.phase != STOP] or list(records)


def handshake_ms(records: Sequence[Stats]) -> HandshakeMs:
    """p50/p90/p99/max (ms) of every handshake the run finished, and their count."""
    hist = merged_histogram(live(records), Stats.handshake_histogram)
    pct = rtt_summary_ms(hist)
    return HandshakeMs(pct.p50, pct.p90, pct.p99, pct.max, hist.get_total_count())


def per_second(records: Sequence[Stats]) -> list[int]:
    """Handshakes finished in each timeline second."""
    counts = []
    for record in records:
        hist = record.handshake_histogram()
        counts.append(hist.get_total_count() if hist is not None else 0)
    return counts


def connect_rate(records: Sequence[Stats]) -> ConnectRate:
    """TLS connections made per second: the best second, and the mean over the seconds that made any."""
    busy = [n for n in per_second(live(records)) if n]
    if not busy:
        return ConnectRate()
    return ConnectRate(float(max(busy)), round(sum(busy) / len(busy), 1))
