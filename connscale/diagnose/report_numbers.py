"""The run report's numbers: every figure of its summary table and phase table, from the run
directory alone, keyed as the page tags them (`data-k`) so a test can check each against the
timeline. Here they are values and a kind; how each kind is written is `FORMATS`, the one place
(the test reads them back the same way); the template (`templates/report.html`) only places them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from connscale.diagnose.records import MemoryTable, SideBytes, Summary
from connscale.diagnose.runfiles import RunFiles
from connscale.metrics import handshakes
from connscale.metrics.cost import mean_cost
from connscale.metrics.histograms import Percentiles
from connscale.metrics.phases import FINAL_HOLD, hold_rtt_ms, is_hold, phase_table, run_rtt_ms
from connscale.metrics.records import Incident, Stats
from connscale.metrics.series import Series, mem_per_conn_at_peak, peak_index, run_end

#: How each kind of number is shown; the test reads them back the same way.
FORMATS: dict[str, Callable[[float], str]] = {
    "int": lambda v: f"{int(v):,}",
    "ms": lambda v: f"{v:.3f}",
    "rate": lambda v: f"{v:,.0f}",
    "bytes": lambda v: f"{v:,.0f}",
    "pct": lambda v: f"{v:.0f}",
    "s": lambda v: f"{v:.1f}",
    "cores": lambda v: f"{v:.2f}",
}


@attrs.frozen
class Shown:
    """A number as the page shows it: tagged with its key; `text` None is an untagged '-'."""

    key: str
    text: str | None


@attrs.frozen
class Number:
    """A figure and its kind (a key of FORMATS); None when there is none to show."""

    value: float | int | None
    kind: str

    def shown(self, key: str) -> Shown:
        return Shown(key, None if self.value is None else FORMATS[self.kind](self.value))


Numbers = dict[str, Number]


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


def gather_incidents(run: RunFiles) -> list[Incident]:
    """The summary's incidents, else those the timeline recorded second by second."""
    if run.summary is not None and run.summary.incidents:
        return list(run.summary.incidents)
    return [i for r in run.records for i in r.incidents]


def compute_numbers(run: RunFiles, s: Series) -> Numbers:
    """Every number of the summary table, keyed as the page tags them."""
    end = run_end(run.records)
    records = run.records[: end + 1]
    memory = user_per_connection(run, s, end)
    out = _counts(run.summary, s, records, end)
    out |= _rtt(run.records, records)
    out |= _resources(s, end, memory)
    out |= _own_cost(run.summary, records)
    if any(s.handshake_count[: end + 1]):
        out |= _tls(records, memory)
    return out


def _counts(summary: Summary | None, s: Series, records: Sequence[Stats], end: int) -> Numbers:
    """Connections, failures, pings and workers: the run's size (up to `end`, before it stopped)."""
    last = records[-1] if records else None
    final = _last_of_phase(records, FINAL_HOLD)
    out = {"target": Number(summary.target if summary is not None else max(s.target[: end + 1], default=0), "int")}
    if summary is not None:
        out["held"] = Number(summary.held, "int")
    # server_open_at_end is None without a server of connscale's own (client.url): nothing counted it.
    server_open = (last.server.open if last.own_server else None) if last else 0
    out |= {
        "peak_open": Number(max(s.open[: end + 1], default=0), "int"),
        "final_hold_open": Number(final.client.open if final else None, "int"),
        "final_hold_seconds": Number(sum(1 for p in s.phase if p == FINAL_HOLD), "int"),
        "open_at_end": Number(last.client.open if last else 0, "int"),
        "server_open_at_end": Number(server_open, "int"),
        "ghosts_max": Number(max(s.ghosts[: end + 1], default=0), "int"),
        "failures": Number(last.failure_total if last else 0, "int"),
        "pings": Number(last.client.pings if last else 0, "int"),
        "pongs": Number(last.client.pongs if last else 0, "int"),
        "connect_rate_max": Number(max(s.connect_rate[: end + 1], default=0.0), "rate"),
        "duration_s": Number(last.elapsed_s if last else 0.0, "s"),
        "workers_server": Number(last.workers.server if last else 0, "int"),
        "workers_client": Number(last.workers.client if last else 0, "int"),
    }
    return out


def _percentiles(prefix: str, pct: Percentiles, kind: str = "ms") -> Numbers:
    return {f"{prefix}_p50": Number(pct.p50, kind), f"{prefix}_p90": Number(pct.p90, kind),
            f"{prefix}_p99": Number(pct.p99, kind), f"{prefix}_max": Number(pct.max, kind)}


def _rtt(all_records: Sequence[Stats], records: Sequence[Stats]) -> Numbers:
    """RTT over the final hold, over every hold, and over the whole run (ramps included)."""
    final_phase = phase_table(all_records).get(FINAL_HOLD)
    return (_percentiles("rtt_final_hold", final_phase.rtt_ms if final_phase else Percentiles())
            | _percentiles("rtt_holds", hold_rtt_ms(records)) | _percentiles("rtt_run", run_rtt_ms(records)))


def _resources(s: Series, end: int, memory: SideBytes) -> Numbers:
    """Each side's workers at the peak: CPU, memory per connection, RSS."""
    peak = peak_index(s, end)
    out: Numbers = {}
    for side, per_connection in (("server", memory.server), ("client", memory.client)):
        cpu = [v for v in s.cpu_pct[side][: end + 1] if v is not None]
        out[f"cpu_max_{side}"] = Number(max(cpu) if cpu else None, "pct")
        out[f"mem_per_conn_{side}"] = Number(per_connection, "bytes")
        out[f"rss_{side}"] = Number(s.rss[side][peak] if peak is not None else None, "bytes")
    return out


def _own_cost(summary: Summary | None, records: Sequence[Stats]) -> Numbers:
    """What connscale itself took over the final hold (the summary's, with the run's own
    process; else the timeline's hub, agents and workers)."""
    cost = summary.cost_final_hold if summary is not None else None
    if cost is None:
        cost = mean_cost(r.cost for r in records if r.phase == FINAL_HOLD)
    if cost is None:
        return {}
    return {"own_cores": Number(cost.cores, "cores"), "own_rss": Number(cost.rss_bytes, "bytes"),
            "own_processes": Number(cost.processes, "int")}


def _tls(records: Sequence[Stats], memory: SideBytes) -> Numbers:
    """With TLS: the handshakes, how many a second, and what a TLS connection costs each side."""
    shakes = handshakes.handshake_ms(records)
    rate = handshakes.connect_rate(records)
    last = records[-1] if records else None
    return _percentiles("tls_handshake", shakes) | {
        "tls_handshakes": Number(shakes.count, "int"),
        "tls_resumed": Number(last.client.resumed if last else 0, "int"),
        "tls_connect_rate_max": Number(rate.max, "rate"),
        "tls_connect_rate_mean": Number(rate.mean, "rate"),
        "tls_mem_per_conn_server": Number(memory.server, "bytes"),
        "tls_mem_per_conn_client": Number(memory.client, "bytes"),
    }


@attrs.frozen
class PhaseRow:
    """One row of the phase table: the phase and its figures, tagged `phase.NAME.FIELD`."""

    phase: str
    kind: str  # final, hold or move: how the row is coloured
    cells: tuple[Shown, ...]


def phase_rows(run: RunFiles) -> list[PhaseRow]:
    rows = []
    for phase, row in phase_table(run.records).items():
        name = phase or "(none)"
        cells = {"seconds": Number(row.seconds, "int"), "open": Number(row.open, "int"),
                 "failures": Number(row.failures, "int"), "samples": Number(row.rtt_samples, "int"),
                 "p50": Number(row.rtt_ms.p50, "ms"), "p99": Number(row.rtt_ms.p99, "ms"),
                 "max": Number(row.rtt_ms.max, "ms")}
        kind = "final" if name == FINAL_HOLD else ("hold" if is_hold(name) else "move")
        rows.append(PhaseRow(name, kind, tuple(v.shown(f"phase.{name}.{k}") for k, v in cells.items())))
    return rows
