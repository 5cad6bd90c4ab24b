"""The compare page's figures: several runs overlaid, one colour per run (matplotlib, Agg, PNG).

The same figure helpers as the report (`plots`), so a reader who knows the report reads
these too; a run keeps its colour in every figure, and its letter (A, B, ...) in every
legend. Time is each run's own, from its first second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from connscale.diagnose.curve import CurvePoint
from connscale.diagnose.plots import (
    _figure,
    _legend,
    _log_ms,
    _no_data,
    _png,
    _present,
    _thousands,
    resource_axes,
)
from connscale.metrics.series import Series

#: A colour per run, in order; the report's client blue first.
RUN_COLORS = ("#1f6fb4", "#e07b00", "#2e7d32", "#7b1fa2", "#c62828", "#00838f", "#5d4037", "#455a64")


@attrs.frozen
class Overlaid:
    """One run as the figures draw it."""

    label: str
    series: Series
    points: Sequence[CurvePoint]

    def since_start(self) -> list[float]:
        start = self.series.elapsed[0] if self.series.elapsed else 0.0
        return [t - start for t in self.series.elapsed]


def color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def scaling_curves(runs: Sequence[Overlaid]) -> bytes:
    """p99 (solid) and p50 (dashed) RTT per plateau against open connections, each run in its colour."""
    fig, ax = _figure()
    drawn = False
    for i, run in enumerate(runs):
        if not run.points:
            continue
        xs = [p.open for p in run.points]
        ax.plot(xs, [p.p99 for p in run.points], color=color(i), marker="o", markersize=4, linewidth=1.6,
                label=f"{run.label} p99")
        ax.plot(xs, [p.p50 for p in run.points], color=color(i), marker="o", markersize=3, linewidth=1.1,
                linestyle="--", label=f"{run.label} p50")
        drawn = True
    ax.set_xlabel("open connections", fontsize=8)
    ax.set_ylabel("RTT, ms", fontsize=8)
    _thousands(ax, "x")
    if drawn:
        _log_ms(ax)
        ax.set_xlim(left=0)
        _legend(ax, loc="best", ncols=2)
    else:
        _no_data(ax, "no pongs recorded")
    return _png(fig)


def connect_rates(runs: Sequence[Overlaid]) -> bytes:
    """Connects per second over each run's own time."""
    fig, ax = _figure()
    for i, run in enumerate(runs):
        ax.plot(run.since_start(), run.series.connect_rate, color=color(i), linewidth=1.4, label=run.label)
    return _over_time(fig, ax, runs, "connects per second")


def open_connections(runs: Sequence[Overlaid]) -> bytes:
    """Open connections over each run's own time, with its target dotted."""
    fig, ax = _figure()
    for i, run in enumerate(runs):
        t = run.since_start()
        ax.step(t, run.series.target, where="post", color=color(i), linestyle=":", linewidth=1.0)
        ax.plot(t, run.series.open, color=color(i), linewidth=1.6, label=f"{run.label} open (target dotted)")
    return _over_time(fig, ax, runs, "connections")


def _over_time(fig: Any, ax: Any, runs: Sequence[Overlaid], ylabel: str) -> bytes:
    ax.set_xlabel("seconds since the run's first second", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_ylim(bottom=0)
    _thousands(ax)
    if any(run.series.elapsed for run in runs):
        _legend(ax, loc="best")
    else:
        _no_data(ax, "no timeline")
    return _png(fig)


def resources(runs: Sequence[Overlaid]) -> bytes:
    """Left: memory per connection added, right: the workers' CPU, against open connections;
    server dots, client triangles, each run in its colour."""
    fig, (mem, cpu) = _figure(2)
    drawn_mem = drawn_cpu = False
    for i, run in enumerate(runs):
        s = run.series
        for side, marker, opens in (("server", "o", s.server_open), ("client", "^", s.open)):
            xs, ys = _present(opens, s.mem_per_conn[side])
            pairs = [(x, y) for x, y in zip(xs, ys) if x > 0]
            if pairs:
                mem.scatter(*zip(*pairs), color=color(i), marker=marker, s=12, alpha=0.8,
                            label=f"{run.label} {side}")
                drawn_mem = True
            xs, ys = _present(opens, s.cpu_pct[side])
            if xs:
                cpu.scatter(xs, ys, color=color(i), marker=marker, s=12, alpha=0.8, label=f"{run.label} {side}")
                drawn_cpu = True
    return resource_axes(fig, mem, cpu, drawn_mem, drawn_cpu)
