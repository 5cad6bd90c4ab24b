"""The scaling curve (RTT against open connections) and its knee.

The curve's points are the holds (plateaus): seconds of steady load at a
known count, with percentiles from their merged histograms. A run without
holds (a standalone hub, an interrupted ramp) falls back to the per-second
points binned by count.

The knee is said in words a reader can check against the plot: the first
point from which p99 RTT stays above KNEE_FACTOR times its low-load value
(and at least KNEE_MIN_MS above it, so a 0.3 ms -> 0.7 ms wobble on loopback
is no knee).
"""

from __future__ import annotations

from typing import Sequence

import attrs

from connscale.metrics.histograms import rtt_summary_ms
from connscale.metrics.phases import is_hold, merged_histogram
from connscale.metrics.records import Stats

KNEE_FACTOR = 2.0
KNEE_MIN_MS = 5.0
_BINS = 12


@attrs.frozen
class CurvePoint:
    open: int
    label: str          # the phase ("hold:2") or the bin ("~12000")
    p50: float
    p99: float
    samples: int


@attrs.frozen
class Knee:
    open: int           # the first count at which RTT had risen
    before_open: int    # the last count at which it had not
    baseline_p99: float
    p99: float


def curve_points(records: Sequence[Stats]) -> list[CurvePoint]:
    """One point per hold (count = its lowest open second), else count bins."""
    holds: dict[str, list[Stats]] = {}
    for r in records:
        if is_hold(r.phase):
            holds.setdefault(r.phase, []).append(r)
    groups: list[tuple[str, int, list[Stats]]] = [
        (phase, min(r.client.open for r in rs), rs) for phase, rs in holds.items()
    ]
    if len([g for g in groups if _samples(g[2])]) < 2:
        groups = _bins(records)
    points = []
    for label, opened, rs in groups:
        hist = merged_histogram(rs)
        if not hist.get_total_count():
            continue
        pct = rtt_summary_ms(hist)
        points.append(CurvePoint(opened, label, float(pct.p50 or 0), float(pct.p99 or 0), hist.get_total_count()))
    return sorted(points, key=lambda p: p.open)


def _samples(records: Sequence[Stats]) -> int:
    return sum(1 for r in records if r.rtt_hist)


def _bins(records: Sequence[Stats]) -> list[tuple[str, int, list[Stats]]]:
    with_rtt = [r for r in records if r.rtt_hist and r.client.open > 0]
    if not with_rtt:
        return []
    top = max(r.client.open for r in with_rtt)
    width = max(1, -(-top // _BINS))
    bins: dict[int, list[Stats]] = {}
    for r in with_rtt:
        bins.setdefault(min(_BINS - 1, (r.client.open - 1) // width), []).append(r)
    return [(f"~{(b + 1) * width}", (b + 1) * width, rs) for b, rs in sorted(bins.items())]


def find_knee(points: Sequence[CurvePoint]) -> Knee | None:
    """The first point from which p99 stays out of the low-load band, None if it never does.

    The band is KNEE_FACTOR times the lowest p99 seen before the point (and
    at least KNEE_MIN_MS above it). Every later point must stay out too: one
    noisy plateau on a busy box followed by a calmer one is no knee.
    """
    for i in range(1, len(points)):
        baseline = min(p.p99 for p in points[:i])
        limit = max(baseline * KNEE_FACTOR, baseline + KNEE_MIN_MS)
        if all(p.p99 > limit for p in points[i:]):
            return Knee(points[i].open, points[i - 1].open, baseline, points[i].p99)
    return None
