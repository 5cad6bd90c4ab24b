"""`runs/<id>/report.html`: one self-contained page a person reads after a run.

Everything comes from the run directory alone: `timeline.jsonl` (the
measurements), `summary.json` (the verdict, when the run got to write one),
`manifest.json` (the host and its limits) and `config.json`. Every number the
page shows is computed from those files (report_numbers, report_verdict,
report_sections, report_manifest) and tagged `data-k`, so a test can check each
one against the timeline; this module gathers them and renders
`templates/report.html` (autoescaped: whatever a run directory says is data,
never markup). Plots are PNGs inlined as data: URIs: the page opens from disk
with no network. A directory written by an older connscale reads the same (the
records read its form); what a directory lacks or could not be read (a summary
cut short, torn timeline lines) is said on the page, never a reason not to
render it.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Sequence

import attrs

from connscale.diagnose import report_manifest, report_sections
from connscale.diagnose.curve import KNEE_FACTOR, CurvePoint, Knee, curve_points, find_knee
from connscale.diagnose.pages import render, write_page
from connscale.diagnose.report_numbers import PhaseRow, Shown, compute_numbers, gather_incidents, phase_rows
from connscale.diagnose.report_verdict import Verdict, verdict
from connscale.diagnose.runfiles import RunFiles, RunReadError, read_run
from connscale.metrics.records import Incident, Stats
from connscale.metrics.series import Series, build_series
from connscale.metrics.timeline import TIMELINE_FILE

REPORT_FILE = "report.html"
CSV_FILE = "rtt_per_second.csv"


class ReportError(Exception):
    """The run directory cannot be reported on; one line."""


def load_run(run_dir: str | os.PathLike[str]) -> RunFiles:
    """The run directory as the report reads it: it needs the timeline; the rest is said if absent."""
    try:
        run = read_run(run_dir)
    except RunReadError as e:
        raise ReportError(str(e)) from None
    if not run.has_timeline:
        raise ReportError(f"{run.dir}: no {TIMELINE_FILE} (is this a run directory?)")
    return run


@attrs.frozen
class Plot:
    id: str
    title: str
    caption: str
    png: bytes

    @property
    def png_base64(self) -> str:
        """The PNG as the page's data: URI carries it (base64: no character of it is markup)."""
        return base64.b64encode(self.png).decode("ascii")


def build_plots(s: Series, points: Sequence[CurvePoint], knee: Knee | None,
                incidents: Sequence[Incident] = (), records: Sequence[Stats] = ()) -> list[Plot]:
    from connscale.diagnose import plots
    from connscale.diagnose.memory import per_second

    marks = [(i.elapsed_s, i.wall or i.trigger or "incident") for i in incidents]
    knee_words = f"; knee at about {knee.open:,}" if knee else ""
    return [
        Plot("connections", "Open connections and target",
             "Clients' and server's open counts against the target ordered; failures (cumulative) on the right "
             "axis. Grey: ramps; green: the final hold.", plots.connections(s, marks)),
        Plot("rate", "Connect rate",
             "New connections per second (and pings sent per second).", plots.connect_rate(s)),
        Plot("rtt", "RTT over time",
             "p50, p99 and max of each second's round trips (log scale).", plots.rtt_over_time(s)),
        Plot("curve", "Scaling curve: RTT versus open connections",
             f"Each dot is one second; lines join the plateaus (holds){knee_words}.",
             plots.scaling_curve(s, points, knee)),
        Plot("failures", "Failures by cause", "Failures in each second, by phase:cause (server ones prefixed).",
             plots.failures_by_cause(s)),
        Plot("resources", "Memory and CPU versus open connections",
             "Left: each side's RSS growth since its workers' first sample, per connection added since. Right: CPU of each "
             "side's workers in % of one core (100 = a core saturated).", plots.resources(s)),
        Plot("workers", "Open connections per worker",
             "One line per worker (server dashed, clients solid), by index.", plots.worker_open(s)),
        Plot("memory", "Memory per held connection, user and kernel, against open connections",
             "Growth since the last second before the first connection, per connection opened since: the observed "
             "server's RSS and PSS, connscale's own workers per side, and the kernel's socket slab and TCP buffers "
             "on the observer's host (the whole host's counters).", plots.memory_per_connection(per_second(records))),
    ] + ([Plot("handshakes", "TLS handshakes",
               "p50, p99 and max of each second's TLS handshakes, TCP connected to TLS ready (log scale); "
               "handshakes finished per second on the right axis.", plots.handshakes(s))]
         if any(s.handshake_count) else [])


@attrs.frozen
class ReportPage:
    """Everything templates/report.html shows, as values (text, numbers as `Shown`, records)."""

    name: str                # the run directory's name
    dir: str
    what: str                # run, or hub record
    badge: str               # HELD, FAILED, HUB RECORD or NO VERDICT
    started: str
    seconds: int             # timeline lines read
    verdict: Verdict
    knee_factor: str
    nums: dict[str, Shown]   # the summary table's numbers, by key, for the verdict's sentences
    gates: report_sections.Gates | None
    summary_rows: list[report_sections.Row]
    phases: list[PhaseRow]
    steps: list[report_sections.Row]
    agents: report_sections.Agents | None
    incidents: list[report_sections.IncidentRow]
    memory: report_sections.Memory | None
    figures: list[Plot]
    events: report_sections.Events
    manifest: report_manifest.Manifest
    agent_hosts: list[report_manifest.AgentHost]


def report_page(run: RunFiles) -> ReportPage:
    s = build_series(run.records)
    nums = compute_numbers(run, s)
    points = curve_points(run.records)
    knee = find_knee(points)
    judged = verdict(run, nums, knee, points)
    incidents = gather_incidents(run)
    hub = run.summary is not None and run.summary.kind == "hub"
    started = run.records[0].t if run.records else None
    return ReportPage(
        name=run.dir.name, dir=str(run.dir), what="hub record" if hub else "run",
        badge={"held": "HELD", "failed": "FAILED"}.get(judged.css, "HUB RECORD" if hub else "NO VERDICT"),
        started=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "-",
        seconds=len(run.records), verdict=judged, knee_factor=f"{KNEE_FACTOR:g}",
        nums={k: n.shown(k) for k, n in nums.items()},
        gates=report_sections.gates(run.summary), summary_rows=report_sections.summary_rows(nums),
        phases=phase_rows(run), steps=report_sections.step_rows(run.summary),
        agents=report_sections.agents(run.summary), incidents=report_sections.incident_rows(incidents),
        memory=report_sections.memory(run), figures=build_plots(s, points, knee, incidents, run.records),
        events=report_sections.events(run.records),
        manifest=report_manifest.manifest(run.manifest, run.config), agent_hosts=report_manifest.agent_hosts(run),
    )


def render_html(run: RunFiles) -> str:
    return render("report.html", **attrs.asdict(report_page(run), recurse=False))


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Render `report.html` into the run directory (or `out`); returns its path."""
    run = load_run(run_dir)
    path = Path(out) if out else run.dir / REPORT_FILE
    return write_page(path, render_html(run))


def write_csv(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    from connscale.metrics.series import write_csv as write_rows

    run = load_run(run_dir)
    path = Path(out) if out else run.dir / CSV_FILE
    with open(path, "w", encoding="utf-8", newline="") as f:
        write_rows(run.records, f)
    return path
