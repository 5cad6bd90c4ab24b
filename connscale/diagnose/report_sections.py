"""The run report's tables, as values: the gates, the summary and step tables, the fleet's
agents, the incidents, memory per connection and the events, each a small record the template
(`templates/report.html`) lays out. Numbers are `Shown` (tagged with their `data-k`); every other
cell is plain text, escaped by the template like any other value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import attrs

from connscale.diagnose.headline import BY_NAME
from connscale.diagnose.gates import MetricCheck, ThresholdResult
from connscale.diagnose.records import MemoryRow, MemoryServer, Summary
from connscale.diagnose.report_numbers import Number, Numbers, Shown, the_memory_table
from connscale.diagnose.runfiles import RunFiles
from connscale.metrics.records import Incident, Stats


# ----------------------------------------------------------------------------- the gates

@attrs.frozen
class ThresholdRow:
    passed: bool
    expression: str
    measured: Shown
    note: str | None  # said in place of the measured value when the metric was not measured
    op: str
    limit: Shown
    unit: str
    source: str


@attrs.frozen
class CheckRow:
    passed: bool | None  # None: skipped
    metric: str
    value: Shown
    baseline: Shown
    change: Shown | None
    unit: str
    better: str
    tolerance: str
    note: str


@attrs.frozen
class HostChange:
    key: str
    before: str
    after: str


@attrs.frozen
class BaselineTable:
    run_dir: str
    checks: tuple[CheckRow, ...]
    lacks: tuple[str, ...]
    changed: tuple[HostChange, ...]


@attrs.frozen
class Gates:
    """The thresholds the run was held to and its baseline comparison (`connscale run`'s gates)."""

    passed: bool
    thresholds: tuple[ThresholdRow, ...]
    baseline: BaselineTable | None


def _measured(metric: str, value: float | None, key: str) -> Shown:
    """A metric's value as the registry writes it, tagged like the page's other numbers."""
    known = BY_NAME.get(metric)
    if value is None or known is None:
        return Shown(key, None)
    return Shown(key, known.format(value, symbol=False))


def gates(summary: Summary | None) -> Gates | None:
    if summary is None or not (summary.thresholds or summary.baseline is not None):
        return None
    b = summary.baseline
    table = None if b is None else BaselineTable(
        b.run_dir, tuple(_check_row(c) for c in b.checks), b.lacks,
        tuple(HostChange(d.key, *(str(v) if v is not None else "-" for v in (d.values[0], d.values[-1])))
              for d in b.changed))
    return Gates(summary.gate_passed, tuple(_threshold_row(i, t) for i, t in enumerate(summary.thresholds)), table)


def _threshold_row(i: int, t: ThresholdResult) -> ThresholdRow:
    return ThresholdRow(
        t.passed, t.expression, _measured(t.metric, t.value, f"threshold.{i}.value"),
        None if t.value is not None else (t.note or "not measured"),
        t.op, _measured(t.metric, t.limit, f"threshold.{i}.limit"), t.unit, t.source)


def _check_row(c: MetricCheck) -> CheckRow:
    key = f"baseline.{c.metric}"
    return CheckRow(
        None if c.outcome == "skipped" else not c.regressed, c.metric,
        _measured(c.metric, c.value, key + ".value"), _measured(c.metric, c.baseline, key + ".baseline"),
        Shown(key + ".change", f"{c.change_pct:+.1f}") if c.change_pct is not None else None,
        c.unit, c.better, f"{c.tolerance_pct:g}", c.note)


# ----------------------------------------------------------------------------- the summary and the ramp

@attrs.frozen
class Row:
    """A row of figures: its label (or step number) and its numbers."""

    label: str
    cells: tuple[Shown, ...]
    unit: str = ""


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


def summary_rows(nums: Numbers) -> list[Row]:
    """The summary table: each row's numbers that the run has (a row with none is left out)."""
    rows = []
    for label, keys, unit in _SUMMARY_ROWS:
        present = [k for k in keys.split("|") if k in nums]
        if present:
            rows.append(Row(label, tuple(nums[k].shown(k) for k in present), unit))
    return rows


def step_rows(summary: Summary | None) -> list[Row]:
    """The ramp as it happened (the summary's `steps`): how fast each step really opened."""
    if summary is None:
        return []
    rows = []
    for st in summary.steps:
        cells = {"target": Number(st.target, "int"), "seconds": Number(st.seconds, "s"),
                 "rate_asked": Number(st.rate_asked, "rate"), "rate_achieved": Number(st.rate_achieved, "rate")}
        rows.append(Row(str(st.step), tuple(n.shown(f"step.{st.step}.{key}") for key, n in cells.items())))
    return rows


# ----------------------------------------------------------------------------- the fleet

@attrs.frozen
class Agents:
    """The fleet: each agent's share (and why), what it held and how, as text cells."""

    rows: tuple[tuple[str, ...], ...]
    lost: tuple[str, ...]


def _plain(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def agents(summary: Summary | None) -> Agents | None:
    if summary is None or not summary.agents:
        return None
    why = {s.agent: s for s in summary.split}
    rows = []
    for a in summary.agents:
        failures = ", ".join(f"{k} {v:,}" for k, v in sorted(a.failures.items()) if v) or "0"
        rate = (f"{a.rate_achieved:,.0f}" if a.rate_achieved is not None else "-") + \
            (f" ({a.rate_asked:,.0f})" if a.rate_asked is not None else "")
        share = why.get(a.agent)
        because = f"{share.limit}: {share.why}" if share is not None and share.limit else "-"
        rows.append((a.agent, a.host, f"{a.share:,}", "lost" if a.lost else f"{a.held:,}", f"{a.peak_open:,}",
                     failures, rate, f"{_plain(a.rtt_ms.p50)} / {_plain(a.rtt_ms.p99)}", _plain(a.cpu_cores),
                     _plain(a.lag_ms_max), str(a.saturated_s), because))
    return Agents(tuple(rows), tuple(x.describe() for x in summary.lost_agents))


# ----------------------------------------------------------------------------- incidents, memory, events

@attrs.frozen
class IncidentRow:
    when: str
    trigger: str
    wall: str
    side: str
    headline: str
    evidence: tuple[str, ...]
    fix: tuple[str, ...]
    numbers: str  # the rest of the incident (what the row does not show), as indented JSON


#: What an incident's row shows in its own cells; the rest goes under "numbers at that moment".
_INCIDENT_SHOWN = frozenset({"t", "elapsed_s", "headline", "evidence", "fix", "wall", "trigger", "side"})


def incident_rows(incidents: Sequence[Incident]) -> list[IncidentRow]:
    return [IncidentRow(f"{i.elapsed_s:.0f} s", i.trigger, i.wall, i.side, i.headline, i.evidence, i.fix,
                        json.dumps({k: v for k, v in i.to_wire().items() if k not in _INCIDENT_SHOWN},
                                   indent=1, sort_keys=True))
            for i in incidents]


@attrs.frozen
class MemoryLine:
    row: MemoryRow
    cells: tuple[Shown, Shown]  # just opened, after pinging


@attrs.frozen
class Memory:
    """Memory per held connection, both ends, user and kernel (diagnose.memory)."""

    lines: tuple[MemoryLine, ...]
    server: MemoryServer | None
    moments: str  # when each figure was read, in words


def memory(run: RunFiles) -> Memory | None:
    """The summary's memory table, else derived from the timeline."""
    table = the_memory_table(run)
    if table is None or not table.rows:
        return None
    lines = tuple(MemoryLine(row, (Number(row.at("opened"), "bytes").shown(f"memory.{row.key}.opened"),
                                   Number(row.at("pinging"), "bytes").shown(f"memory.{row.key}.pinging")))
                  for row in table.rows)
    moments = ", ".join(f"{name} at {m.elapsed_s:.0f} s ({m.open:,} open)"
                        for name, m in (("baseline", table.baseline), *table.moments.items()))
    return Memory(lines, table.server, moments)


@attrs.frozen
class Events:
    rows: tuple[tuple[str, str], ...]  # (when, what), the first `limit`
    total: int


def events(records: Sequence[Stats], limit: int = 200) -> Events:
    rows = [(f"{r.elapsed_s:.0f} s", e) for r in records for e in r.events]
    return Events(tuple(rows[:limit]), len(rows))
