"""The report's figures: matplotlib (Agg, no display) to PNG bytes.

matplotlib is imported here and only here, lazily: hubs and workers never
pay for it. Figures are built with `Figure` + the Agg canvas instead of
pyplot, so no global state or backend selection leaks between renders.
"""

from __future__ import annotations

import io
from typing import Any, Sequence

from connscale.diagnose.curve import CurvePoint, Knee
from connscale.metrics.phases import FINAL_HOLD, STOP, is_hold
from connscale.metrics.series import Series

# One palette for every figure: a reader learns "blue is the client" once.
CLIENT = "#1f6fb4"
SERVER = "#e07b00"
TARGET = "#333333"
FAIL = "#c62828"
GHOST = "#7b1fa2"
P50, P99, MAX = "#1f6fb4", "#e07b00", "#9e9e9e"
RAMP_SHADE = "#eceff1"
FINAL_SHADE = "#e8f5e9"
STOP_SHADE = "#fbe9e7"
CAUSE_COLORS = ("#c62828", "#6a1b9a", "#ef6c00", "#2e7d32", "#00838f", "#5d4037", "#ad1457", "#455a64")

WIDTH, HEIGHT, DPI = 7.6, 3.3, 110


def _figure(ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, HEIGHT), dpi=DPI, layout="constrained", facecolor="white")
    # Any: matplotlib types subplots() as one union over its squeeze cases (an array here for ncols > 1).
    axes: Any = fig.subplots(1, ncols) if ncols > 1 else fig.subplots()
    for ax in axes if ncols > 1 else [axes]:
        ax.grid(True, color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
        ax.tick_params(labelsize=8)
    return fig, axes


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    # The canvas's own print_png draws once; Figure.savefig drew twice here.
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def _thousands(ax: Any, axis: str = "y") -> None:
    from matplotlib.ticker import FuncFormatter

    fmt = FuncFormatter(lambda v, _: f"{v / 1000:g}k" if abs(v) >= 1000 else f"{v:g}")
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(fmt)


def _shade_phases(ax: Any, s: Series) -> None:
    """Grey behind ramps, green behind the final hold: where the load was moving."""
    if not s.elapsed:
        return
    start = 0
    for i in range(1, len(s) + 1):
        if i == len(s) or s.phase[i] != s.phase[start]:
            phase = s.phase[start]
            left = s.elapsed[start - 1] if start > 0 else s.elapsed[start] - 1.0
            right = s.elapsed[i - 1]
            if phase == FINAL_HOLD:
                ax.axvspan(left, right, color=FINAL_SHADE, zorder=0, linewidth=0)
            elif phase.startswith("ramp"):
                ax.axvspan(left, right, color=RAMP_SHADE, zorder=0, linewidth=0)
            elif phase == STOP:
                ax.axvspan(left, right, color=STOP_SHADE, zorder=0, linewidth=0)
            start = i


def _log_ms(ax: Any) -> None:
    """A log axis labelled 0.2, 0.5, 1, 2, 5 ms... instead of 2x10^-1."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=11, color="#757575")


def _legend(ax: Any, **kw: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7.5, frameon=False, **kw)


def _labels(ax: Any, x: str, y: str, title: str = "") -> None:
    """An axes' labels (and title), in the figures' one size."""
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel(x, fontsize=8)
    ax.set_ylabel(y, fontsize=8)


def _legend_or(ax: Any, drawn: bool, nothing: str, **kw: Any) -> None:
    """The legend of what was drawn, or, where nothing was, `nothing` in the middle of the axes."""
    if drawn:
        _legend(ax, **kw)
    else:
        _no_data(ax, nothing)


def connections(s: Series, incidents: Sequence[tuple[float, str]] = ()) -> bytes:
    fig, ax = _figure()
    _shade_phases(ax, s)
    ax.step(s.elapsed, s.target, where="post", color=TARGET, linestyle=":", linewidth=1.2, label="target")
    # The server's count as a wide pale band under the clients' line: where
    # they differ (ghosts, a lost worker) the band shows from under it.
    ax.plot(s.elapsed, s.server_open, color=SERVER, linewidth=5, alpha=0.35, label="open (server)",
            solid_capstyle="butt")
    ax.plot(s.elapsed, s.open, color=CLIENT, linewidth=1.8, label="open (clients)", zorder=3)
    if any(s.ghosts):
        ax.plot(s.elapsed, s.ghosts, color=GHOST, linewidth=1.0, label="ghosts (half-open)")
    _labels(ax, "seconds", "connections")
    ax.set_ylim(bottom=0)
    _thousands(ax)
    for at, label in incidents:
        ax.axvline(at, color=FAIL, linewidth=0.8)
        ax.annotate(label, (at, 1.0), xycoords=("data", "axes fraction"), fontsize=7, color=FAIL,
                    rotation=90, va="top", ha="right")
    if any(s.failures_total):
        right = ax.twinx()
        right.plot(s.elapsed, s.failures_total, color=FAIL, linewidth=1.2, label="failures (cumulative)")
        right.set_ylabel("failures", fontsize=8, color=FAIL)
        right.tick_params(labelsize=8, colors=FAIL)
        right.set_ylim(bottom=0)
        right.spines["top"].set_visible(False)
        lines = ax.get_legend_handles_labels()
        more = right.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7.5, frameon=False, loc="best")
    else:
        ax.text(0.99, 0.02, "no failures", transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                color="#2e7d32")
        _legend(ax, loc="best")
    return _png(fig)


def connect_rate(s: Series) -> bytes:
    fig, ax = _figure()
    _shade_phases(ax, s)
    ax.plot(s.elapsed, s.connect_rate, color=CLIENT, linewidth=1.5, label="connects/s")
    ax.plot(s.elapsed, s.ping_rate, color="#78909c", linewidth=1.0, label="pings/s")
    _labels(ax, "seconds", "per second")
    ax.set_ylim(bottom=0)
    _thousands(ax)
    _legend(ax, loc="best")
    return _png(fig)


def _present(xs: Sequence[float], ys: Sequence[float | None]) -> tuple[list[float], list[float]]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def rtt_over_time(s: Series) -> bytes:
    fig, ax = _figure()
    _shade_phases(ax, s)
    drawn = False
    for values, color, label, width in ((s.rtt.max, MAX, "max", 0.9), (s.rtt.p99, P99, "p99", 1.4),
                                        (s.rtt.p50, P50, "p50", 1.4)):
        xs, ys = _present(s.elapsed, values)
        if xs:
            ax.plot(xs, ys, color=color, linewidth=width, label=label, marker="." if len(xs) < 40 else None)
            drawn = True
    _labels(ax, "seconds", "RTT of each second, ms")
    if drawn:
        _log_ms(ax)
    _legend_or(ax, drawn, "no pongs recorded", loc="best")
    return _png(fig)


def handshakes(s: Series) -> bytes:
    """Each second's TLS handshake percentiles, and how many finished."""
    fig, ax = _figure()
    _shade_phases(ax, s)
    for values, color, label, width in ((s.handshake.max, MAX, "max", 0.9), (s.handshake.p99, P99, "p99", 1.4),
                                        (s.handshake.p50, P50, "p50", 1.4)):
        xs, ys = _present(s.elapsed, values)
        if xs:
            ax.plot(xs, ys, color=color, linewidth=width, label=label, marker="." if len(xs) < 40 else None)
    _labels(ax, "seconds", "TLS handshake of each second, ms")
    _log_ms(ax)
    _legend(ax, loc="upper left")
    count = ax.twinx()
    count.plot(s.elapsed, s.handshake_count, color="#78909c", linewidth=1.0, linestyle="--", label="handshakes/s")
    count.set_ylabel("handshakes per second", fontsize=8)
    count.set_ylim(bottom=0)
    count.tick_params(labelsize=7)
    _thousands(count)
    return _png(fig)


def scaling_curve(s: Series, points: Sequence[CurvePoint], knee: Knee | None) -> bytes:
    fig, ax = _figure()
    ramp = [(o, r) for o, r, ph in zip(s.open, s.rtt.p99, s.phase) if r is not None and not is_hold(ph)]
    held = [(o, r) for o, r, ph in zip(s.open, s.rtt.p99, s.phase) if r is not None and is_hold(ph)]
    if ramp:
        ax.scatter(*zip(*ramp), s=9, color="#b0bec5", label="p99 of a ramp second", zorder=2)
    if held:
        ax.scatter(*zip(*held), s=9, color="#ffcc80", label="p99 of a hold second", zorder=2)
    if points:
        xs = [p.open for p in points]
        ax.plot(xs, [p.p99 for p in points], color=P99, marker="o", markersize=4, linewidth=1.6,
                label="p99 per plateau", zorder=3)
        ax.plot(xs, [p.p50 for p in points], color=P50, marker="o", markersize=4, linewidth=1.6,
                label="p50 per plateau", zorder=3)
    if knee is not None:
        ax.axvline(knee.open, color=FAIL, linewidth=1.0, linestyle="--")
        ax.annotate(f"knee ~{knee.open:,}", (knee.open, 0.97), xycoords=("data", "axes fraction"), fontsize=8,
                    color=FAIL, ha="right", va="top", rotation=90)
    _labels(ax, "open connections", "RTT, ms")
    _thousands(ax, "x")
    drawn = bool(ramp or held or points)
    if drawn:
        _log_ms(ax)
        ax.set_xlim(left=0)
    _legend_or(ax, drawn, "no pongs recorded", loc="best")
    return _png(fig)


def failures_by_cause(s: Series, top: int = 7) -> bytes:
    fig, ax = _figure()
    _shade_phases(ax, s)
    totals = {k: sum(v) for k, v in s.failures_by_cause.items() if sum(v)}
    if not totals:
        _no_data(ax, "no failures")
        ax.set_xlabel("seconds", fontsize=8)
        if s.elapsed:
            ax.set_xlim(s.elapsed[0] - 1, s.elapsed[-1])
        return _png(fig)
    # Ties by name: the causes arrive in a set's order, which changes from one process to the next.
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    shown, rest = ranked[:top], ranked[top:]
    bottom = [0] * len(s)
    columns = [(k, s.failures_by_cause[k]) for k in shown]
    if rest:
        columns.append((f"{len(rest)} other causes", [sum(s.failures_by_cause[k][i] for k in rest)
                                                      for i in range(len(s))]))
    for (label, values), color in zip(columns, CAUSE_COLORS):
        ax.bar(s.elapsed, values, bottom=bottom, width=0.9, color=color, label=label, align="edge")
        bottom = [b + v for b, v in zip(bottom, values)]
    _labels(ax, "seconds", "failures in that second")
    _thousands(ax)
    _legend(ax, loc="best")
    return _png(fig)


def resources(s: Series) -> bytes:
    fig, (mem, cpu) = _figure(2)
    drawn_mem = drawn_cpu = False
    for side, color, opens in (("server", SERVER, s.server_open), ("client", CLIENT, s.open)):
        # One dot per second: several seconds share a count during a hold,
        # and a line through them would zig-zag.
        xs, ys = _present(opens, s.mem_per_conn[side])
        pairs = [(x, y) for x, y in zip(xs, ys) if x > 0]
        if pairs:
            mem.scatter(*zip(*pairs), color=color, s=12, alpha=0.8, label=side)
            drawn_mem = True
        xs, ys = _present(opens, s.cpu_pct[side])
        if xs:
            cpu.scatter(xs, ys, color=color, s=12, alpha=0.8, label=side)
            drawn_cpu = True
    return resource_axes(fig, mem, cpu, drawn_mem, drawn_cpu)


def resource_axes(fig: Any, mem: Any, cpu: Any, drawn_mem: bool, drawn_cpu: bool) -> bytes:
    """The memory-per-connection and CPU axes, labelled and finished (the report's and the compare page's)."""
    for ax, drawn, title, unit in ((mem, drawn_mem, "memory per connection added (RSS growth)", "bytes"),
                                   (cpu, drawn_cpu, "CPU of the workers", "% of one core")):
        _labels(ax, "open connections", unit, title)
        _thousands(ax, "x")
        if drawn:
            # Room above the highest dot, so none sits clipped on the frame.
            ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        _legend_or(ax, drawn, "no samples", loc="best")
    return _png(fig)


def worker_open(s: Series, limit: int = 64) -> bytes:
    fig, ax = _figure()
    _shade_phases(ax, s)
    labels = sorted(s.worker_open, key=lambda k: (s.worker_side[k] != "server", k))[:limit]
    for i, label in enumerate(labels):
        xs, ys = _present(s.elapsed, s.worker_open[label])
        side = s.worker_side[label]
        ax.plot(xs, ys, linewidth=1.1, linestyle="-" if side == "client" else "--", label=label,
                color=(CLIENT if side == "client" else SERVER) if len(labels) <= 2 else None)
    _labels(ax, "seconds", "open connections")
    ax.set_ylim(bottom=0)
    _thousands(ax)
    if len(labels) <= 12:  # a legend of more would hide the lines
        _legend_or(ax, bool(labels), "no workers reported", loc="best", ncols=2)
    return _png(fig)


def memory_per_connection(points: dict[str, list[tuple[int, float]]]) -> bytes:
    """Each memory quantity per connection (diagnose.memory.per_second) against open connections:
    user memory on the left, the kernel's on the right."""
    from connscale.diagnose.memory import QUANTITIES

    fig, (user, kernel) = _figure(2)
    colors = dict(zip((q[0] for q in QUANTITIES), CAUSE_COLORS))
    drawn = {"user": False, "kernel": False}
    for key, what, kind, _ in QUANTITIES:
        pairs = points.get(key) or []
        if not pairs:
            continue
        ax = user if kind == "user" else kernel
        ax.scatter(*zip(*pairs), color=colors[key], s=10, alpha=0.8, label=what)
        drawn[kind] = True
    for ax, kind, title in ((user, "user", "user memory per connection"),
                            (kernel, "kernel", "kernel memory per connection (observer's host)")):
        _labels(ax, "open connections", "bytes", title)
        _thousands(ax, "x")
        _legend_or(ax, drawn[kind], "no observer rows", loc="best")
    return _png(fig)
