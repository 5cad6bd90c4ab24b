"""`connscale compare`'s page: one self-contained HTML file, the runs side by side.

A `Comparison` (the numbers) and the runs' timelines (the curves) rendered through a
jinja2 template (`templates/compare.html`, in the pages' one environment, `pages`:
autoescaped, so run names, incident words and manifest values are data, never markup) in
the report's style, with the figures (`overlay`) inlined as PNG data: URIs, so the page
opens from disk with no network. Every number is tagged `data-k` with where it comes from
(`m.METRIC.I` a metric of run I, `c.METRIC.I` its change, `run.I.FIELD`, `inc.I.K.FIELD`,
`h.KEY.I` a setting), so a test can check each against the runs' own files.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connscale.diagnose import overlay
from connscale.diagnose.compare import Comparison, compare, format_change, letters, started_text
from connscale.diagnose.curve import curve_points
from connscale.diagnose.headline import BY_NAME
from connscale.diagnose.pages import render, write_page
from connscale.diagnose.report_numbers import gather_incidents
from connscale.diagnose.runfiles import RunFiles
from connscale.metrics.series import build_series


def _figures(runs: Sequence[RunFiles], names: Sequence[str]) -> list[dict[str, str]]:
    drawn = [overlay.Overlaid(name, build_series(r.records), curve_points(r.records)) for name, r in zip(names, runs)]
    figures = [
        ("curve", "Scaling curves: RTT against open connections",
         "p99 (solid) and p50 (dashed) of each plateau (each hold), one colour per run.",
         overlay.scaling_curves(drawn)),
        ("open", "Open connections over time", "Each run from its own first second; its target dotted.",
         overlay.open_connections(drawn)),
        ("rate", "Connect rate over time", "New connections per second, each run from its own first second.",
         overlay.connect_rates(drawn)),
        ("resources", "Memory and CPU per connection",
         "Left: each side's RSS growth per connection added; right: CPU of each side's workers in % of one "
         "core, against open connections (server dots, client triangles).", overlay.resources(drawn)),
    ]
    return [{"id": fid, "title": title, "caption": caption, "png": base64.b64encode(png).decode("ascii")}
            for fid, title, caption, png in figures]


def _incidents(run: RunFiles) -> list[dict[str, Any]]:
    return [{"t": f"{i.elapsed_s:.0f} s", "wall": i.wall, "side": i.side, "headline": i.headline}
            for i in gather_incidents(run)]


def context(c: Comparison, runs: Sequence[RunFiles]) -> dict[str, Any]:
    names = letters(len(c.runs))
    metrics = []
    for row in c.metrics:
        metric = BY_NAME[row.metric]
        cells = []
        for i, value in enumerate(row.values):
            cells.append({
                "value": metric.format(value, symbol=False) if value is not None else None,
                "change": format_change(row.change_pct[i], row.direction[i]) if i else "",
                "direction": row.direction[i],
            })
        metrics.append({"name": row.metric, "unit": row.unit, "better": row.better, "doc": metric.doc,
                        "cells": cells})
    infos = []
    for i, (info, run) in enumerate(zip(c.runs, runs)):
        infos.append({
            "letter": names[i], "color": overlay.color(i), "info": info, "started": started_text(info.started),
            "target": f"{info.target:,}" if info.target is not None else None,
            "duration": f"{info.duration_s:.1f}" if info.duration_s is not None else None,
            "incidents": _incidents(run),
            "verdict_css": {"held": "held", "knee": "held", "failed": "failed"}.get(info.verdict, "unknown"),
        })
    return {
        "names": names, "runs": infos, "metrics": metrics, "notes": c.notes,
        "manifest": c.manifest, "same_settings": c.same_settings, "figures": _figures(runs, names),
    }


def render_html(runs: Sequence[RunFiles], comparison: Comparison | None = None) -> str:
    c = comparison if comparison is not None else compare(runs)
    return render("compare.html", **context(c, runs))


def write_compare(runs: Sequence[RunFiles], out: str | os.PathLike[str],
                  comparison: Comparison | None = None) -> Path:
    """Write the page to `out`; returns its path."""
    return write_page(Path(out), render_html(runs, comparison))
