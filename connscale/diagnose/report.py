"""`runs/<id>/report.html`: one self-contained page a person reads after a run.

Everything comes from the run directory alone: `timeline.jsonl` (the
measurements), `summary.json` (the verdict, when the run got to write one),
`manifest.json` (the host and its limits) and `config.json`. Every number the
page shows is computed here from those files and tagged `data-k`, so a test
can check each one against the timeline. Plots are PNGs inlined as data:
URIs: the page opens from disk with no network. A directory written by an
older connscale reads the same (the records read its form); what a directory
lacks or could not be read (a summary cut short, torn timeline lines) is said
on the page, never a reason not to render it.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import attrs

from connscale.diagnose.fixes import advise
from connscale.diagnose.curve import (
    KNEE_FACTOR,
    CurvePoint,
    Knee,
    curve_points,
    find_knee,
)
from connscale.diagnose.headline import BY_NAME
from connscale.diagnose.manifest import read_manifest
from connscale.diagnose.records import Explanation, MemoryTable, SideBytes, Summary
from connscale.diagnose.runfiles import RunFiles, RunReadError, read_run
from connscale.diagnose.search import capacity_line
from connscale.metrics import handshakes
from connscale.metrics.cost import mean_cost
from connscale.metrics.histograms import Percentiles
from connscale.metrics.phases import FINAL_HOLD, hold_rtt_ms, is_hold, phase_table, run_rtt_ms
from connscale.metrics.records import Incident, Stats
from connscale.metrics.series import Series, build_series, mem_per_conn_at_peak, peak_index, run_end
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


# ----------------------------------------------------------------------------- the numbers

#: How each kind of number is shown; the test reads them back the same way.
_FORMATS = {
    "int": lambda v: f"{int(v):,}",
    "ms": lambda v: f"{v:.3f}",
    "rate": lambda v: f"{v:,.0f}",
    "bytes": lambda v: f"{v:,.0f}",
    "pct": lambda v: f"{v:.0f}",
    "s": lambda v: f"{v:.1f}",
    "cores": lambda v: f"{v:.2f}",
}


@attrs.frozen
class Number:
    value: float | int | None
    kind: str


def _last_of_phase(records: Sequence[Stats], phase: str) -> Stats | None:
    for r in reversed(records):
        if r.phase == phase:
            return r
    return None


def the_memory_table(run: RunFiles) -> MemoryTable | None:
    """The run's memory table: its summary's, else derived from its timeline (None without an
    observer's baseline: a run directory from before the observer)."""
    from connscale.diagnose.memory import memory_table

    table = run.summary.memory if run.summary is not None else None
    return table if table is not None else memory_table(run.records)


def user_per_connection(run: RunFiles, s: Series, end: int) -> SideBytes:
    """connscale's workers' user memory per connection per side at the peak: the memory table's
    (its one owner, as summary.json's `mem_per_conn_bytes` and the tls: line say it); a run
    directory without the table, from before the observer, shows what its report always showed."""
    table = the_memory_table(run)
    if table is not None:
        return table.workers_per_connection()
    return SideBytes(*mem_per_conn_at_peak(s, end))


def compute_numbers(run: RunFiles, s: Series) -> dict[str, Number]:
    """Every number of the summary table, keyed as the page tags them."""
    summary = run.summary
    end = run_end(run.records)
    records = run.records[: end + 1]
    last = records[-1] if records else None
    out: dict[str, Number] = {}

    def put(key: str, value: Any, kind: str) -> None:
        out[key] = Number(value, kind)

    put("target", summary.target if summary is not None else max(s.target[: end + 1], default=0), "int")
    if summary is not None:
        put("held", summary.held, "int")
    put("peak_open", max(s.open[: end + 1], default=0), "int")
    final = _last_of_phase(records, FINAL_HOLD)
    put("final_hold_open", final.client.open if final else None, "int")
    put("final_hold_seconds", sum(1 for p in s.phase if p == FINAL_HOLD), "int")
    put("open_at_end", last.client.open if last else 0, "int")
    # None without a server of connscale's own (client.url): nothing counted it.
    put("server_open_at_end", last.server.open if last and last.own_server else None if last else 0, "int")
    put("ghosts_max", max(s.ghosts[: end + 1], default=0), "int")
    put("failures", last.failure_total if last else 0, "int")
    put("pings", last.client.pings if last else 0, "int")
    put("pongs", last.client.pongs if last else 0, "int")
    put("connect_rate_max", max(s.connect_rate[: end + 1], default=0.0), "rate")
    put("duration_s", last.elapsed_s if last else 0.0, "s")
    put("workers_server", last.workers.server if last else 0, "int")
    put("workers_client", last.workers.client if last else 0, "int")

    final_phase = phase_table(run.records).get(FINAL_HOLD)
    spans = {
        "final_hold": final_phase.rtt_ms if final_phase else Percentiles(),
        "holds": hold_rtt_ms(records),
        "run": run_rtt_ms(records),
    }
    for span, pct in spans.items():
        put(f"rtt_{span}_p50", pct.p50, "ms")
        put(f"rtt_{span}_p90", pct.p90, "ms")
        put(f"rtt_{span}_p99", pct.p99, "ms")
        put(f"rtt_{span}_max", pct.max, "ms")

    peak = peak_index(s, end)
    memory = user_per_connection(run, s, end)
    for side in ("server", "client"):
        cpu = [v for v in s.cpu_pct[side][: end + 1] if v is not None]
        put(f"cpu_max_{side}", max(cpu) if cpu else None, "pct")
        put(f"mem_per_conn_{side}", getattr(memory, side), "bytes")
        put(f"rss_{side}", s.rss[side][peak] if peak is not None else None, "bytes")
    # What connscale itself took over the final hold (the summary's, with the run's own
    # process; else the timeline's hub, agents and workers).
    cost = summary.cost_final_hold if summary is not None else None
    if cost is None:
        cost = mean_cost(r.cost for r in records if r.phase == FINAL_HOLD)
    if cost is not None:
        put("own_cores", cost.cores, "cores")
        put("own_rss", cost.rss_bytes, "bytes")
        put("own_processes", cost.processes, "int")
    if any(s.handshake_count[: end + 1]):
        # With TLS: the handshakes, how many a second, and what a TLS connection costs each side.
        shakes = handshakes.handshake_ms(records)
        put("tls_handshake_p50", shakes.p50, "ms")
        put("tls_handshake_p90", shakes.p90, "ms")
        put("tls_handshake_p99", shakes.p99, "ms")
        put("tls_handshake_max", shakes.max, "ms")
        put("tls_handshakes", shakes.count, "int")
        put("tls_resumed", last.client.resumed if last else 0, "int")
        rate = handshakes.connect_rate(records)
        put("tls_connect_rate_max", rate.max, "rate")
        put("tls_connect_rate_mean", rate.mean, "rate")
        put("tls_mem_per_conn_server", memory.server, "bytes")
        put("tls_mem_per_conn_client", memory.client, "bytes")
    return out


def phase_numbers(run: RunFiles) -> list[tuple[str, dict[str, Number]]]:
    rows = []
    for phase, row in phase_table(run.records).items():
        rows.append((phase or "(none)", {
            "seconds": Number(row.seconds, "int"),
            "open": Number(row.open, "int"),
            "failures": Number(row.failures, "int"),
            "samples": Number(row.rtt_samples, "int"),
            "p50": Number(row.rtt_ms.p50, "ms"),
            "p99": Number(row.rtt_ms.p99, "ms"),
            "max": Number(row.rtt_ms.max, "ms"),
        }))
    return rows


# ----------------------------------------------------------------------------- HTML pieces

def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _n(key: str, number: Number) -> str:
    """A number tagged with its key; '-' (untagged) when there is none."""
    if number.value is None:
        return '<span class="none">-</span>'
    return f'<span class="n" data-k="{_e(key)}">{_FORMATS[number.kind](number.value)}</span>'


def _nk(nums: Mapping[str, Number], key: str) -> str:
    return _n(key, nums[key])


def _top_causes(summary_failures: Mapping[str, int], n: int = 3) -> list[tuple[str, int]]:
    ranked = sorted(((k, int(v)) for k, v in summary_failures.items() if int(v)), key=lambda kv: -kv[1])
    return ranked[:n]


def _cause_of(key: str) -> str:
    return key.rsplit(":", 1)[-1]


def verdict_html(run: RunFiles, nums: Mapping[str, Number], knee: Knee | None,
                 points: Sequence[CurvePoint]) -> tuple[str, str]:
    """(css class, paragraphs) in plain words: what happened, why, and the fix."""
    summary = run.summary
    parts: list[str] = []
    explanation: Explanation | None = None
    if summary is None:
        verdict = "unknown"
        parts.append(
            "<p>This run left no <code>summary.json</code> (it was killed, or this is a hub's own record "
            "directory): everything below comes from the timeline alone.</p>"
        )
    elif summary.kind == "hub":
        verdict = "unknown"
        parts.append(
            "<p>This is <strong>a hub's own record</strong> (<code>connscale server</code>, stopped): it ran no "
            "scenario, so there is no verdict; the numbers below are what its agents did while it ran"
            + (f": {_e(summary.explanation.headline)}" if summary.explanation is not None else "") + ".</p>"
        )
    else:
        verdict = summary.verdict
        explanation = summary.explanation
    for problem in run.problems:
        parts.append(f'<p class="warn">Not read: {_e(problem)}.</p>')
    if verdict == "held":
        parts.append(
            f"<p><strong>Held {_nk(nums, 'held')} connections</strong> (target {_nk(nums, 'target')}) through "
            f"the final hold of {_nk(nums, 'final_hold_seconds')} s with no failure. RTT during the final hold: "
            f"p50 {_nk(nums, 'rtt_final_hold_p50')} ms, p99 {_nk(nums, 'rtt_final_hold_p99')} ms, "
            f"max {_nk(nums, 'rtt_final_hold_max')} ms (over the whole run, ramps included, "
            f"p99 was {_nk(nums, 'rtt_run_p99')} ms).</p>"
        )
    if explanation is None and summary is not None and verdict in ("held", "failed"):
        explanation = derive_explanation(run, summary, int(nums["peak_open"].value or 0))
    if summary is not None and verdict != "held" and not (explanation and explanation.headline):
        parts.append(
            f"<p><strong>Stopped at {_nk(nums, 'open_at_end')} of {_nk(nums, 'target')} connections</strong> "
            f"(peak {_nk(nums, 'peak_open')}): {_e(summary.reason or 'no reason recorded')}.</p>"
        )
    if summary is not None and summary.search is not None:
        # The search as a capacity number, the line `connscale run` prints.
        parts.append(f'<p class="capacity"><strong>{_e(summary.search.capacity or capacity_line(summary.search))}'
                     "</strong></p>")
    if explanation is not None:
        parts.append(explanation_html(explanation, brief=verdict == "held"))
    if verdict != "held" and not (explanation and explanation.fix):
        failures = (summary.failures if summary is not None else {}) or \
            (run.records[run_end(run.records)].failures() if run.records else {})
        top = _top_causes(failures)
        if top:
            listed = ", ".join(f"<code>{_e(k)}</code> ({_n('failures.' + k, Number(v, 'int'))})" for k, v in top)
            cause = _cause_of(top[0][0])
            parts.append(
                f"<p>Failures by cause: {listed}. <strong>{_e(cause)}</strong>: {_e(advise(cause))}</p>"
            )
        elif verdict != "unknown":
            parts.append(
                "<p>No failure was recorded, so the limit was not a refused or reset connection: compare the "
                "connect rate with the target below, and the workers' CPU (a saturated measuring side ramps "
                "slowly and inflates RTT).</p>"
            )
    if knee is not None:
        parts.append(
            f"<p>Scaling: p99 RTT stayed near its low-load value "
            f"({_n('knee.baseline_p99', Number(knee.baseline_p99, 'ms'))} ms) up to "
            f"{_n('knee.before_open', Number(knee.before_open, 'int'))} connections and reached "
            f"{_n('knee.p99', Number(knee.p99, 'ms'))} ms at {_n('knee.open', Number(knee.open, 'int'))} "
            f"(more than {KNEE_FACTOR:g}&times;): that is the knee of the curve.</p>"
        )
    elif len(points) >= 2:
        parts.append(
            f"<p>Scaling: p99 RTT stayed within {KNEE_FACTOR:g}&times; of its low-load value from "
            f"{_n('curve.first_open', Number(points[0].open, 'int'))} to "
            f"{_n('curve.last_open', Number(points[-1].open, 'int'))} connections: no knee within this run.</p>"
        )
    css = {"held": "held", "failed": "failed"}.get(verdict, "unknown")
    return css, "\n".join(parts)


def derive_explanation(run: RunFiles, summary: Summary, peak_open: int) -> Explanation:
    """A run whose summary has no explanation: explain it now, from the directory alone.

    `peak_open` is the timeline's (before the stop phase), so the words agree
    with the table beside them.
    """
    from connscale.diagnose.verdict import explain

    final = summary.rtt_final_hold_ms
    return explain(
        summary.verdict, summary.target, held=summary.held, peak_open=peak_open, reason=summary.reason,
        incidents=gather_incidents(run), preflight=summary.preflight,
        rtt=final if final.p50 is not None else summary.rtt_ms, losses=summary.worker_losses,
        target_events=summary.target_events,
    )


def explanation_html(explanation: Explanation, brief: bool = False) -> str:
    """The diagnosis: the wall that was hit, its evidence and its fix.

    `brief` (a held run, already summed up in words) leaves out a headline
    that names no wall.
    """
    out = []
    headline: str | None = explanation.headline
    wall = explanation.wall
    side = f" &middot; {_e(explanation.side)}" if explanation.side else ""
    named = wall and wall not in ("none", "unknown")
    tag = f' <span class="wall">{_e(wall)}{side}</span>' if named else ""
    if brief and not named:
        headline = None
    if headline:
        out.append(f'<p class="explanation">{_e(headline[:1].upper() + headline[1:])}{tag}</p>')
    # Evidence the headline already says (the run's reason, when no wall was named) is said once.
    evidence = [x for x in explanation.evidence
                if not headline or x.removeprefix("the run stopped because: ") not in headline]
    if evidence:
        out.append('<p class="label">Evidence</p><ul>' + "".join(f"<li>{_e(x)}</li>" for x in evidence) + "</ul>")
    if explanation.fix:
        out.append('<p class="label">Fix</p><ul class="fix">'
                   + "".join(f"<li>{_e(x)}</li>" for x in explanation.fix) + "</ul>")
    if explanation.measuring_side_saturated:
        out.append('<p class="warn">The measuring side (connscale\'s own client workers) was saturated: the '
                   "RTT and ramp rate above are partly connscale's, not the server's.</p>")
    return "".join(out)


_SUMMARY_ROWS: tuple[tuple[str, str, str], ...] = (
    # (label, key, unit)
    ("target", "target", ""),
    ("held through the final hold", "held", ""),
    ("peak open", "peak_open", ""),
    ("final hold: seconds / open at its end", "final_hold_seconds|final_hold_open", ""),
    ("open at the end (clients / server)", "open_at_end|server_open_at_end", ""),
    ("most ghosts (half-open) at once", "ghosts_max", ""),
    ("failures", "failures", ""),
    ("pings / pongs", "pings|pongs", ""),
    ("fastest connect rate", "connect_rate_max", "/s"),
    ("workers (server / client)", "workers_server|workers_client", ""),
    ("duration", "duration_s", "s"),
    ("RTT final hold p50 / p90 / p99 / max", "rtt_final_hold_p50|rtt_final_hold_p90|rtt_final_hold_p99|rtt_final_hold_max", "ms"),
    ("RTT all holds p50 / p90 / p99 / max", "rtt_holds_p50|rtt_holds_p90|rtt_holds_p99|rtt_holds_max", "ms"),
    ("RTT whole run, ramps included, p50 / p90 / p99 / max", "rtt_run_p50|rtt_run_p90|rtt_run_p99|rtt_run_max", "ms"),
    ("peak CPU of the workers (server / client)", "cpu_max_server|cpu_max_client", "% of a core"),
    ("memory per connection added, at the peak (server / client)", "mem_per_conn_server|mem_per_conn_client", "bytes"),
    ("workers' RSS at the peak (server / client)", "rss_server|rss_client", "bytes"),
    ("connscale itself over the final hold: CPU cores / RSS / processes", "own_cores|own_rss|own_processes", ""),
    ("TLS handshake p50 / p90 / p99 / max", "tls_handshake_p50|tls_handshake_p90|tls_handshake_p99|tls_handshake_max",
     "ms"),
    ("TLS handshakes (resumed)", "tls_handshakes|tls_resumed", ""),
    ("TLS connect rate (best second / mean)", "tls_connect_rate_max|tls_connect_rate_mean", "/s"),
    ("user memory per TLS connection, at the peak (server / client)", "tls_mem_per_conn_server|tls_mem_per_conn_client",
     "bytes"),
)


def summary_table(nums: Mapping[str, Number]) -> str:
    rows = []
    for label, keys, unit in _SUMMARY_ROWS:
        present = [k for k in keys.split("|") if k in nums]
        if not present:
            continue
        cells = " / ".join(_nk(nums, k) for k in present)
        rows.append(f"<tr><th>{_e(label)}</th><td class=\"num\">{cells}</td><td class=\"unit\">{_e(unit)}</td></tr>")
    return '<table class="kv">' + "".join(rows) + "</table>"


def phases_table(rows: Sequence[tuple[str, Mapping[str, Number]]]) -> str:
    head = ("phase", "seconds", "open at its end", "failures", "RTT samples", "p50 ms", "p99 ms", "max ms")
    body = []
    for phase, cells in rows:
        kind = "final" if phase == FINAL_HOLD else ("hold" if is_hold(phase) else "move")
        tds = "".join(f'<td class="num">{_n(f"phase.{phase}.{k}", v)}</td>' for k, v in cells.items())
        body.append(f'<tr class="{kind}"><th>{_e(phase)}</th>{tds}</tr>')
    ths = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table class="grid"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _measured(metric: str, value: float | None, key: str) -> str:
    """A metric's value as the registry writes it, tagged like the page's other numbers."""
    known = BY_NAME.get(metric)
    if value is None or known is None:
        return '<span class="none">-</span>'
    return f'<span class="n" data-k="{_e(key)}">{_e(known.format(value, symbol=False))}</span>'


def gate_badge(summary: Summary | None) -> str:
    if summary is None or not (summary.thresholds or summary.baseline is not None):
        return ""
    passed = summary.gate_passed
    return f'<a href="#gates"><span class="badge {"held" if passed else "failed"}">GATES {"PASSED" if passed else "FAILED"}</span></a>'


def gates_html(summary: Summary | None) -> str:
    """The thresholds the run was held to and its baseline comparison (`connscale run`'s gates)."""
    if summary is None or not (summary.thresholds or summary.baseline is not None):
        return ""
    out = ['<h2 id="gates">Gates</h2>']
    badge = {True: '<span class="badge held">PASS</span>', False: '<span class="badge failed">FAIL</span>'}
    if summary.thresholds:
        rows = []
        for i, t in enumerate(summary.thresholds):
            measured = _measured(t.metric, t.value, f"threshold.{i}.value") if t.value is not None else \
                f'<span class="none">{_e(t.note or "not measured")}</span>'
            rows.append(f"<tr><td>{badge[t.passed]}</td><th><code>{_e(t.expression)}</code></th>"
                        f'<td class="num">{measured}</td>'
                        f'<td class="num">{_e(t.op)} {_measured(t.metric, t.limit, f"threshold.{i}.limit")}</td>'
                        f'<td class="unit">{_e(t.unit)}</td><td class="muted">{_e(t.source)}</td></tr>')
        head = "".join(f"<th>{h}</th>" for h in ("", "threshold", "measured", "limit", "unit", "written in"))
        out.append(f'<table class="grid gates"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    b = summary.baseline
    if b is not None:
        rows = []
        for c in b.checks:
            key = f"baseline.{c.metric}"
            change = (f'<span class="n" data-k="{_e(key)}.change">{c.change_pct:+.1f}</span>%'
                      if c.change_pct is not None else "")
            mark = badge[not c.regressed] if c.outcome != "skipped" else '<span class="badge">SKIP</span>'
            rows.append(f"<tr><td>{mark}</td><th>{_e(c.metric)}</th>"
                        f'<td class="num">{_measured(c.metric, c.value, key + ".value")}</td>'
                        f'<td class="num">{_measured(c.metric, c.baseline, key + ".baseline")}</td>'
                        f'<td class="num">{change}</td><td class="unit">{_e(c.unit)}</td>'
                        f'<td class="muted">{_e(c.better)} is better; tolerance {c.tolerance_pct:g}%'
                        f'{"; " + _e(c.note) if c.note else ""}</td></tr>')
        head = "".join(f"<th>{h}</th>" for h in ("", "metric", "this run", "baseline", "change", "unit", ""))
        out.append(f"<h3>Against the baseline <code>{_e(b.run_dir)}</code></h3>"
                   f'<table class="grid gates"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
        for lack in b.lacks:
            out.append(f'<p class="warn">The baseline: {_e(lack)}.</p>')
        if b.changed:
            items = "".join(f"<li><code>{_e(d.key)}</code>: {_e(d.values[0] if d.values[0] is not None else '-')}"
                            f" &rarr; {_e(d.values[-1] if d.values[-1] is not None else '-')}</li>" for d in b.changed)
            out.append(f'<p class="label">What changed between the two hosts</p><ul>{items}</ul>')
        else:
            out.append('<p class="muted">The two hosts\' manifests (kernel, sysctls, rlimits, versions, '
                       "configuration) are the same.</p>")
    return "".join(out)


def steps_html(summary: Summary | None) -> str:
    """The ramp as it happened (the summary's `steps`): how fast each step really opened."""
    if summary is None or not summary.steps:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("step", "target", "seconds to reach", "rate asked /s",
                                              "rate achieved /s"))
    rows = []
    for st in summary.steps:
        k = st.step
        cells = [("target", st.target, "int"), ("seconds", st.seconds, "s"),
                 ("rate_asked", st.rate_asked, "rate"), ("rate_achieved", st.rate_achieved, "rate")]
        tds = "".join(f'<td class="num">{_n(f"step.{k}.{key}", Number(v, kind))}</td>' for key, v, kind in cells)
        rows.append(f"<tr><th>{_e(k)}</th>{tds}</tr>")
    return (f'<h3>Ramp steps</h3><table class="grid"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"<code>{_e(json.dumps(value, sort_keys=True))}</code>"
    return _e(value)


def gather_incidents(run: RunFiles) -> list[Incident]:
    """The summary's incidents, else those the timeline recorded second by second."""
    if run.summary is not None and run.summary.incidents:
        return list(run.summary.incidents)
    return [i for r in run.records for i in r.incidents]


#: What an incident's row shows in its own cells; the rest goes under "numbers at that moment".
_INCIDENT_SHOWN = frozenset({"t", "elapsed_s", "headline", "evidence", "fix", "wall", "trigger", "side"})


def incidents_html(incidents: Sequence[Incident]) -> str:
    if not incidents:
        return ""
    rows = []
    for i in incidents:
        evidence = "".join(f"<li>{_e(x)}</li>" for x in i.evidence)
        fix = "".join(f"<li>{_e(x)}</li>" for x in i.fix)
        rest = {k: v for k, v in i.to_wire().items() if k not in _INCIDENT_SHOWN}
        details = (f"<details><summary>numbers at that moment</summary><pre>{_e(json.dumps(rest, indent=1, sort_keys=True))}"
                   "</pre></details>")
        side = f" &middot; {_e(i.side)}" if i.side else ""
        evidence_list = f"<ul>{evidence}</ul>" if evidence else ""
        fix_list = f'<ul class="fix">{fix}</ul>' if fix else ""
        rows.append(
            f'<tr><td class="t">{i.elapsed_s:.0f} s</td><td>{_e(i.trigger)}</td>'
            f'<td><b>{_e(i.wall)}</b>{side}</td>'
            f"<td>{_e(i.headline)}{evidence_list}{details}</td><td>{fix_list}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("when", "trigger", "wall", "what was seen", "fix"))
    return (f'<h2>Incidents</h2><table class="grid incidents"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def memory_html(run: RunFiles) -> str:
    """Memory per held connection, both ends, user and kernel (diagnose.memory): the summary's table,
    else derived from the timeline."""
    table = the_memory_table(run)
    if table is None or not table.rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("what", "user or kernel", "whose",
                                              "bytes per connection, just opened", "after pinging"))
    body = []
    for row in table.rows:
        cells = "".join(f'<td class="num">{_n(f"memory.{row.key}.{col}", Number(row.at(col), "bytes"))}</td>'
                        for col in ("opened", "pinging"))
        body.append(f"<tr><th>{_e(row.what)}</th><td>{_e(row.kind)}</td><td>{_e(row.side)}</td>{cells}</tr>")
    server = table.server
    who = f" The observed server: {_e(server.label)} (pid {_e(server.pid)})." if server is not None else ""
    moments = ", ".join(f"{name} at {m.elapsed_s:.0f} s ({m.open:,} open)"
                        for name, m in (("baseline", table.baseline), *table.moments.items()))
    return (f'<h2>Memory per held connection</h2><table class="grid"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table><p class="muted">Growth per connection from {moments}.{who} '
            "Kernel figures are the whole host's (both ends when the clients run on it too).</p>")


def events_html(records: Sequence[Stats], limit: int = 200) -> str:
    rows = [(r.elapsed_s, e) for r in records for e in r.events]
    if not rows:
        return ""
    shown = rows[:limit]
    body = "".join(f"<tr><td class=\"t\">{t:.0f} s</td><td>{_e(e)}</td></tr>" for t, e in shown)
    more = f"<p class=\"muted\">{len(rows) - limit} more in timeline.jsonl</p>" if len(rows) > limit else ""
    return (f'<details><summary>Events ({len(rows)})</summary><table class="grid events">{body}</table>'
            f"{more}</details>")


def _kv(data: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_cell(v)}</td></tr>" for k, v in data.items())
    return f'<table class="kv small">{rows}</table>'


def _bytes(n: Any) -> str:
    try:
        return f"{int(n) / 2**30:.1f} GiB"
    except (TypeError, ValueError):
        return "-"


def agents_html(summary: Summary | None) -> str:
    """The fleet: each agent's share (and why), what it held and how, beside the merged figures."""
    if summary is None or not summary.agents:
        return ""
    why = {s.agent: s for s in summary.split}
    head = ("agent", "host", "share", "held", "peak", "failures", "ramp /s (asked)", "RTT p50 / p99 ms", "CPU cores",
            "worst lag ms", "saturated s", "share because")
    rows = []
    for a in summary.agents:
        failures = ", ".join(f"{k} {v:,}" for k, v in sorted(a.failures.items()) if v) or "0"
        rate = (f"{a.rate_achieved:,.0f}" if a.rate_achieved is not None else "-") + \
            (f" ({a.rate_asked:,.0f})" if a.rate_asked is not None else "")
        rtt = f"{_plain(a.rtt_ms.p50)} / {_plain(a.rtt_ms.p99)}"
        share = why.get(a.agent)
        because = f"{share.limit}: {share.why}" if share is not None and share.limit else "-"
        held = "lost" if a.lost else f"{a.held:,}"
        cells = (a.agent, a.host, f"{a.share:,}", held, f"{a.peak_open:,}", failures, rate, rtt,
                 _plain(a.cpu_cores), _plain(a.lag_ms_max), str(a.saturated_s), because)
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    lost = "".join(f'<p class="warn">{_e(x.describe())}.</p>' for x in summary.lost_agents)
    return (f"<h2>Agents</h2>{lost}<table class=\"grid events\"><thead><tr>"
            + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>" + "".join(rows)
            + "</tbody></table><p class=\"muted\">The target was split by what each agent's host reaches; each "
            "agent's RTT comes from its own histograms, and the merged figures above from all of them added.</p>")


def _plain(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def host_manifests_html(run: RunFiles) -> str:
    """Each agent's host, as its manifest says (beside the run's own host above)."""
    if run.summary is None:
        return ""
    parts = []
    for name, file in sorted(run.summary.manifests.items()):
        if name == "hub":
            continue
        # Only a name in the run directory: summary.json is not trusted to point elsewhere.
        manifest = read_manifest(run.dir, Path(file).name)
        if manifest is None:
            parts.append(f"<h3>{_e(name)}</h3><p class=\"muted\">{_e(file)} is missing or unreadable.</p>")
            continue
        parts.append(manifest_html(manifest, None).replace("<h2>Manifest</h2>", f"<h2>Manifest of agent {_e(name)}</h2>", 1))
    return "".join(parts)


def manifest_html(manifest: Mapping[str, Any] | None, config: Mapping[str, Any] | None) -> str:
    if manifest is None:
        body = "<p class=\"muted\">No manifest.json in this run directory (it is written when a run starts).</p>"
    else:
        host = dict(manifest.get("host", {}))
        host["ram"] = _bytes(host.pop("ram_bytes", None))
        host["ram available at start"] = _bytes(host.pop("ram_available_bytes", None))
        rl = {f"RLIMIT_{k.upper()} (soft / hard)": f"{v.get('soft')} / {v.get('hard')}"
              for k, v in manifest.get("rlimits", {}).items()}
        sysctls = {k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in manifest.get("sysctls", {}).items()}
        body = (
            '<div class="cols">'
            f"<div><h3>Host</h3>{_kv(host)}<h3>Limits of the run's process</h3>{_kv(rl)}"
            f"<h3>Versions</h3>{_kv(manifest.get('versions', {}))}</div>"
            f"<div><h3>sysctls</h3>{_kv(sysctls)}<p class=\"muted\">written {_e(manifest.get('written', ''))}</p></div>"
            "</div>"
        )
        config = manifest.get("config") or config
    if config:
        body += ("<details><summary>Effective configuration (secrets removed)</summary>"
                 f"<pre>{_e(json.dumps(config, indent=2, sort_keys=True))}</pre></details>")
    return f"<h2>Manifest</h2>{body}"


#: The report's style (the compare page wears it too, so the two read alike).
CSS = """
:root { --fg:#1d2329; --muted:#66707a; --line:#e3e6ea; --held:#2e7d32; --failed:#c62828; --unknown:#8d6e63; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--fg);
       background:#f6f7f9; }
main { max-width:1640px; margin:0 auto; padding:20px 28px 40px; }
header { display:flex; align-items:baseline; gap:16px; flex-wrap:wrap; }
h1 { font-size:22px; margin:0; } h2 { font-size:17px; margin:28px 0 10px; } h3 { font-size:14px; margin:14px 0 6px; }
.muted, .sub { color:var(--muted); }
.verdict { border-left:6px solid var(--unknown); background:#fff; padding:12px 18px; margin:16px 0; border-radius:4px;
           box-shadow:0 1px 2px rgba(0,0,0,.06); }
.verdict.held { border-color:var(--held); } .verdict.failed { border-color:var(--failed); }
.verdict p { margin:6px 0; } .badge { font-weight:700; letter-spacing:.04em; padding:2px 10px; border-radius:3px;
           color:#fff; background:var(--unknown); font-size:13px; }
.badge.held { background:var(--held); } .badge.failed { background:var(--failed); }
.explanation { font-weight:600; } .wall { font-weight:500; font-size:12px; background:#fdecea; color:var(--failed);
           padding:1px 8px; border-radius:10px; margin-left:6px; }
.label { margin:8px 0 2px; font-size:12px; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); }
.verdict ul { margin:2px 0 6px; padding-left:22px; } ul.fix li { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size:12.5px; }
.warn { color:#8a5300; background:#fff8e1; padding:6px 10px; border-radius:3px; }
.top { display:grid; grid-template-columns: minmax(380px, 1fr) minmax(480px, 1.3fr); gap:24px; align-items:start; }
table { border-collapse:collapse; background:#fff; }
table.kv th { text-align:left; font-weight:500; color:var(--muted); padding:4px 14px 4px 8px; vertical-align:top; }
table.kv td { padding:4px 8px; } table.kv tr + tr { border-top:1px solid var(--line); }
table.kv.small { font-size:12.5px; width:100%; }
td.num { font-variant-numeric: tabular-nums; white-space:nowrap; } td.unit { color:var(--muted); padding-right:10px; }
table.grid { width:100%; font-size:13px; } table.grid th, table.grid td { padding:4px 8px; border-bottom:1px solid var(--line); }
table.grid thead th { text-align:right; color:var(--muted); font-weight:500; }
table.grid thead th:first-child { text-align:left; } table.grid td.num { text-align:right; }
table.grid tbody th { text-align:left; font-weight:500; }
tr.move { color:var(--muted); } tr.final { background:#e8f5e9; }
table.incidents td, table.events td { text-align:left; vertical-align:top; }
.none { color:#b0b7bf; }
.plots { display:grid; grid-template-columns: repeat(auto-fill, minmax(700px, 1fr)); gap:18px; }
figure { margin:0; background:#fff; padding:10px 12px 8px; border-radius:4px; box-shadow:0 1px 2px rgba(0,0,0,.06); }
figure img { width:100%; height:auto; display:block; }
figcaption { font-size:12.5px; color:var(--muted); margin-top:4px; } figcaption b { color:var(--fg); }
.cols { display:grid; grid-template-columns: 1fr 1fr; gap:24px; }
pre { background:#fff; padding:12px; overflow:auto; font-size:12px; border:1px solid var(--line); }
code { font-size:12.5px; } details { margin:10px 0; } summary { cursor:pointer; font-weight:500; }
"""


@attrs.frozen
class Plot:
    id: str
    title: str
    caption: str
    png: bytes


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


def render_html(run: RunFiles) -> str:
    s = build_series(run.records)
    nums = compute_numbers(run, s)
    points = curve_points(run.records)
    knee = find_knee(points)
    css, verdict = verdict_html(run, nums, knee, points)
    incidents = gather_incidents(run)
    figures = build_plots(s, points, knee, incidents, run.records)
    hub = run.summary is not None and run.summary.kind == "hub"
    badge = {"held": "HELD", "failed": "FAILED"}.get(css, "HUB RECORD" if hub else "NO VERDICT")
    what = "hub record" if hub else "run"
    started = run.records[0].t if run.records else None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "-"
    figs = "".join(
        f'<figure id="{p.id}"><img alt="{_e(p.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.png).decode("ascii")}"><figcaption><b>{_e(p.title)}.</b> {_e(p.caption)}'
        "</figcaption></figure>"
        for p in figures
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>connscale report: {_e(run.dir.name)}</title><style>{CSS}</style></head>
<body><main>
<header><h1>connscale {what} {_e(run.dir.name)}</h1><span class="badge {css}">{badge}</span>{gate_badge(run.summary)}
<span class="sub">started {_e(when)} &middot; {len(run.records)} seconds recorded</span></header>
<section class="verdict {css}" id="verdict">{verdict}</section>
{gates_html(run.summary)}
<div class="top">
<section><h2>Summary</h2>{summary_table(nums)}</section>
<section><h2>Phases</h2>{phases_table(phase_numbers(run))}
<p class="muted">RTT of a phase comes from the merged histograms of its seconds; a second in which the phase
changed counts as ramp, so holds are pure.</p>{steps_html(run.summary)}</section>
</div>
{agents_html(run.summary)}
{incidents_html(incidents)}
{memory_html(run)}
<h2>Plots</h2><div class="plots">{figs}</div>
{events_html(run.records)}
{manifest_html(run.manifest, run.config)}
{host_manifests_html(run)}
<p class="muted">Rendered from {_e(run.dir)} by <code>connscale report</code>; re-render with
<code>connscale report {_e(run.dir)}</code>, per-second percentiles with <code>--csv</code>.</p>
</main></body></html>
"""


def write_report(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Render `report.html` into the run directory (or `out`); returns its path."""
    run = load_run(run_dir)
    path = Path(out) if out else run.dir / REPORT_FILE
    return write_page(path, render_html(run))


def write_page(path: Path, page: str) -> Path:
    """Write an HTML page whole: a reader never sees half of it."""
    # A temporary file of our own, made exclusively beside the page: a name someone
    # left there (a link to a file of ours) is never followed, only the page replaced.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_csv(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    from connscale.metrics.series import write_csv as write_rows

    run = load_run(run_dir)
    path = Path(out) if out else run.dir / CSV_FILE
    with open(path, "w", encoding="utf-8", newline="") as f:
        write_rows(run.records, f)
    return path
