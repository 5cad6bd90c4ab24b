"""The timeline, incidents, the explanation and summary.json as typed records (issue 18.1).

One record each, one way to and from JSON, a schema in what is written, old run
directories (written before the schema, kept in tests/fixtures/old-runs) still
read and reported the same, a malformed peer answer one line, the README's
tables the record's own, and no module reading them through string keys.
"""

from __future__ import annotations

import ast
import html
import json
import re
import shutil
from pathlib import Path

import attrs
import pytest

from connscale.records.base import RecordError
from connscale.diagnose.gates import BaselineResult, Difference, MetricCheck, ThresholdResult
from connscale.diagnose.records import (
    Explanation,
    MemoryMoment,
    MemoryRow,
    MemoryTable,
    Miss,
    SideBytes,
    Summary,
    TlsSummary,
    read_summary,
)
from connscale.diagnose.report import load_run, write_report
from connscale.host.kernel import kernel_snapshot
from connscale.host.observed import ObservedEvent, ObserverRow
from connscale.metrics.cost import Cost, KindCost
from connscale.metrics.handshakes import ConnectRate, HandshakeMs
from connscale.metrics.phases import phase_table, summary_fields
from connscale.metrics.records import SCHEMA, AgentRow, Incident, KernelCounters, Stats
from connscale.metrics.series import build_series
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.timeline import read_timeline
from connscale.metrics.workers import WorkerRow
from tests.support.fieldtable import field_table

REPO = Path(__file__).resolve().parent.parent
OLD_RUNS = Path(__file__).resolve().parent / "fixtures" / "old-runs"


def copy_old_run(kind: str, tmp_path: Path) -> Path:
    run_dir = tmp_path / kind
    shutil.copytree(OLD_RUNS / kind, run_dir)
    return run_dir


def shown(page: str) -> dict[str, str]:
    return {html.unescape(k): v for k, v in re.findall(r'data-k="([^"]+)">([^<]*)<', page)}


# ---------------------------------------------------------------- run directories written before the schema


@pytest.mark.parametrize("kind", ["held", "failed", "search"])
def test_a_run_directory_from_before_the_schema_reports_as_it_did(kind: str, tmp_path: Path) -> None:
    """main's own report of each old run showed these numbers (report-numbers.json); the
    typed readers show the same, every one of them."""
    run_dir = copy_old_run(kind, tmp_path)
    page = write_report(run_dir).read_text()
    assert shown(page) == json.loads((OLD_RUNS / kind / "report-numbers.json").read_text())
    assert "Not read:" not in page
    run = load_run(run_dir)
    assert run.problems == () and run.summary is not None and run.summary.schema == 1
    assert all(r.schema == 1 for r in run.records)
    # What the summary said then is what it says now, read back the one way summaries are read.
    raw = json.loads((run_dir / "summary.json").read_text())
    assert run.summary.verdict == raw["verdict"] and run.summary.held == raw["held"]
    assert run.summary.explanation is not None
    assert run.summary.explanation.headline == raw["explanation"]["headline"]
    assert run.summary.rtt_final_hold_ms.to_wire() == raw["rtt_final_hold_ms"]


def test_old_timelines_read_into_phases_and_series(tmp_path: Path) -> None:
    records = list(read_timeline(OLD_RUNS / "failed" / "timeline.jsonl"))
    raw = [json.loads(line) for line in (OLD_RUNS / "failed" / "timeline.jsonl").read_text().splitlines()]
    assert len(records) == len(raw) == 9
    table = phase_table(records)
    summary = json.loads((OLD_RUNS / "failed" / "summary.json").read_text())
    # The phases of the old timeline are what the old summary recorded of them.
    fields = summary_fields(records)
    # (the summary was written before the hub's last stop second)
    moving = {p: r.to_wire() for p, r in fields.rtt_by_phase.items() if p != "stop"}
    assert moving == {p: r for p, r in summary["rtt_by_phase"].items() if p != "stop"}
    assert fields.rtt_final_hold_ms.to_wire() == summary["rtt_final_hold_ms"]
    assert sorted(table) == sorted(summary["rtt_by_phase"])
    s = build_series(records)
    assert s.open == [r["client"]["open"] for r in raw]
    assert s.failures_total[-1] == sum(raw[-1]["client"]["failures"].values()) + \
        sum(raw[-1]["server"]["failures"].values())
    # The killed worker's incidents: schema 1 carried the kernel's changes as `<counter>_delta`.
    (line,) = [r for r in records if r.incidents]
    (raw_line,) = [r for r in raw if r["incidents"]]
    first, raw_first = line.incidents[0], raw_line["incidents"][0]
    assert (first.wall, first.side, first.trigger) == ("server_down", "server", "failures")
    deltas = {k[:-6]: v for k, v in raw_first["kernel"].items() if k.endswith("_delta")}
    assert first.kernel_delta.to_wire() == deltas
    assert first.kernel.listen_overflows == raw_first["kernel"]["listen_overflows"]
    assert [w.pid for w in first.workers] == [w["pid"] for w in raw_first["workers"]]
    # A load side without live workers was `{}` then, and is None now.
    assert line.load.server is not None and line.load.client is not None


def test_a_run_directory_cut_short_renders_and_says_what_it_lacks(tmp_path: Path) -> None:
    run_dir = copy_old_run("held", tmp_path)
    timeline = (run_dir / "timeline.jsonl").read_text()
    (run_dir / "timeline.jsonl").write_text(timeline[: len(timeline) - 700])   # the crash came mid-line
    summary = (run_dir / "summary.json").read_text()
    (run_dir / "summary.json").write_text(summary[:500])                       # and mid-summary
    run = load_run(run_dir)
    assert len(run.records) == 7 and run.summary is None
    assert run.problems[0].startswith("summary.json: not JSON: ")
    assert run.problems[1].startswith("timeline.jsonl: 1 line skipped (line 8: Stats: not JSON")
    page = write_report(run_dir).read_text()
    assert page.count("Not read:") == 2 and "NO VERDICT" in page


def test_a_summary_that_does_not_fit_is_one_line(tmp_path: Path) -> None:
    assert read_summary(tmp_path) == (None, "")
    (tmp_path / "summary.json").write_text(json.dumps({"verdict": "held", "target": "many"}))
    summary, problem = read_summary(tmp_path)
    assert summary is None and problem == "summary.json: Summary.target: expected an integer, got 'many'"
    (tmp_path / "summary.json").write_text(json.dumps({"target": 5}))
    assert read_summary(tmp_path)[1] == "summary.json: Summary.verdict: missing"


# ---------------------------------------------------------------- one way to and from JSON, strictly


def a_line() -> Stats:
    """The first line of the held run with failures, losses and an incident added."""
    line = next(read_timeline(OLD_RUNS / "failed" / "timeline.jsonl"))
    incident = next(r for r in read_timeline(OLD_RUNS / "failed" / "timeline.jsonl") if r.incidents).incidents[0]
    return attrs.evolve(line, schema=SCHEMA, incidents=(incident,), unjudged_failures=("steady:ECONNRESET",))


def test_a_line_goes_to_json_and_back_whole() -> None:
    line = a_line()
    again = Stats.from_json(line.to_json())
    assert again == line and again.schema == SCHEMA
    assert json.loads(line.to_json())["schema"] == SCHEMA
    # Written in field order, no key beyond the record's.
    assert list(json.loads(line.to_json())) == [f.name for f in attrs.fields(Stats)]


def test_a_worker_row_spelt_out_for_speed_is_still_the_record_whole() -> None:
    row = a_line().server_workers[1]
    assert list(row.to_wire()) == [f.name for f in attrs.fields(WorkerRow)]
    assert WorkerRow.from_wire(json.loads(json.dumps(row.to_wire()))) == row
    assert row.cpu is not None and row.lag_ms_max is not None and row.rss_bytes and row.cpu_s


def test_the_summary_goes_to_json_and_back_whole() -> None:
    raw = json.loads((OLD_RUNS / "search" / "summary.json").read_text())
    summary = Summary.from_wire(raw)
    assert summary.search is not None and summary.search.curve and summary.preflight is not None
    new = attrs.evolve(summary, schema=SCHEMA)
    assert Summary.from_wire(json.loads(json.dumps(new.to_wire()))) == new
    # Nothing of the old file is lost on the way (it gains its schema, and the fields added
    # since it was written, each at its default: no observer's events or memory, no cost, no TLS, no
    # metrics, thresholds or baseline, no fleet).
    added = {"target_events": [], "memory": None, "cost_final_hold": None,
             "tls": {"server": None, "client": False, "resumed": 0},
             "handshake_ms": {"p50": None, "p90": None, "p99": None, "max": None, "count": 0},
             "tls_connect_rate": {"max": None, "mean": None}, "mem_per_conn_bytes": {"server": None, "client": None},
             "metrics": {}, "thresholds": [], "baseline": None,
             "kind": "run", "split": [], "agents": [], "lost_agents": [], "manifests": {}}
    assert {k: v for k, v in new.to_wire().items() if k != "schema"} == {
        k: v for k, v in raw.items()} | {"search": new.to_wire()["search"]} | added


@pytest.mark.parametrize("change, problem", [
    ({"client": {"open": -1}}, "Stats.client: open: must be between 0 and 4611686018427387904, got -1"),
    ({"client": None}, "Stats.client: expected a mapping, got None"),
    ({"elapsed_s": "soon"}, "Stats.elapsed_s: expected a number, got 'soon'"),
    ({"clients": {"a": {"connected": "yes"}}}, "Stats.clients: ['a']: AgentRow.connected: expected true or false"),
    ({"clients": {"a": {"workers": [{"index": 0, "open": 1.5}]}}},
     "Stats.clients: ['a']: AgentRow.workers: [0]: WorkerRow.open: expected an integer, got 1.5"),
    ({"incidents": [{"elapsed_s": 1.0, "trigger": "failures"}]}, "Stats.incidents: [0]: Incident.wall: missing"),
    ({"rtt_ms": {"p50": float("nan")}}, "Stats.rtt_ms: Percentiles.p50: must be a finite number"),
    ({"load": {"client": {"cpu_max": True}}}, "Stats.load: LoadSummary.client: SideLoad.cpu_max: expected a number"),
])
def test_a_stats_answer_that_does_not_fit_is_one_line(change: dict, problem: str) -> None:
    data = {**a_line().to_wire(), **change}
    with pytest.raises(RecordError) as e:
        Stats.from_wire(data)
    assert str(e.value).startswith(problem) and "\n" not in str(e.value)


def test_kernel_counters_are_the_hosts_snapshot_field_for_field() -> None:
    """Every counter host.kernel reads has its field (the collector checks the snapshot with
    the record: a counter added there and not here would be dropped without a word)."""
    snapshot = kernel_snapshot()
    assert snapshot, "no kernel counters on this host"
    assert set(snapshot) <= {f.name for f in attrs.fields(KernelCounters)}
    assert KernelCounters.from_wire(snapshot).to_wire() == snapshot
    assert set(KernelCounters.CUMULATIVE) <= {f.name for f in attrs.fields(KernelCounters)}


# ---------------------------------------------------------------- one owner each


def test_failures_target_and_workers_of_a_record_have_one_answer() -> None:
    row = WorkerRow(index=0, pid=7, alive=True, open=5)
    line = Stats(
        elapsed_s=1.0,
        client=Snapshot(failures={"connect:EMFILE": 2}), server=Snapshot(failures={"accept:EMFILE": 1}),
        clients={"up": AgentRow(connected=True, target=300, connecting=4, workers=(row,)),
                 "gone": AgentRow(connected=False, target=700, connecting=9, workers=(row,))},
        server_workers=(row,),
    )
    assert line.failures() == {"connect:EMFILE": 2, "server:accept:EMFILE": 1}
    # A lost agent's target and workers are history: connected agents only.
    assert line.target == 300 and line.connecting == 4
    assert [(w.side, w.agent, w.label, w.name) for w in line.worker_rows()] == [
        ("server", "hub", "server #1", "hub-server-worker-1"), ("client", "up", "up #1", "up-client-worker-1")]


# ---------------------------------------------------------------- the README says what the record says


def test_the_readme_lists_exactly_the_timelines_fields() -> None:
    readme = (REPO / "README.md").read_text()
    for table in (field_table(Stats), field_table(AgentRow, "clients.NAME."), field_table(WorkerRow),
                  field_table(ObserverRow, "observers.NAME."), field_table(Cost, "cost."),
                  field_table(KindCost, "cost.by_kind.KIND."), field_table(Summary),
                  field_table(MemoryTable, "memory."), field_table(MemoryRow, "memory.rows[]."),
                  field_table(TlsSummary, "tls."), field_table(HandshakeMs, "handshake_ms."),
                  field_table(ConnectRate, "tls_connect_rate."), field_table(SideBytes, "mem_per_conn_bytes."),
                  field_table(ThresholdResult, "thresholds[]."), field_table(BaselineResult, "baseline."),
                  field_table(MetricCheck, "baseline.checks[].")):
        assert table in readme, "README.md, 'The timeline, line by line', should read:\n\n" + table
    for cls in (Stats, AgentRow, WorkerRow, Incident, Explanation, Summary, ObserverRow, ObservedEvent, Cost,
                KindCost, MemoryTable, MemoryRow, MemoryMoment, TlsSummary, HandshakeMs, ConnectRate, SideBytes,
                ThresholdResult, BaselineResult, MetricCheck, Difference, Miss):
        missing = [f.name for f in attrs.fields(cls) if not f.metadata.get("connscale.doc")]
        assert not missing, f"{cls.__name__}: fields without a doc: {missing}"


# ---------------------------------------------------------------- no reader spells the records' keys

#: Keys of the timeline, incident, explanation and summary records: reading one with a string
#: (`r["clients"]`, `s.get("explanation")`) is reading a record as a dict.
RECORD_KEYS = frozenset({
    "clients", "server_workers", "server_lost_workers", "worker_losses", "rtt_hist", "rtt_window_ms",
    "incidents", "unjudged_failures", "stale_s", "poll_ms", "lost_reason", "disconnects", "failure_total",
    "kernel_delta", "measuring_side_saturated", "explanation", "headline", "evidence", "peak_open",
    "open_at_end", "server_open_at_end", "counted_failures", "rtt_final_hold_ms", "rtt_holds_ms", "rtt_by_phase",
    "client_workers_start_s", "title", "cpu_user_s", "cpu_system_s", "rss_bytes", "lag_ms_max", "lag_ms_mean",
    # the observer's rows and events, connscale's own cost, the memory table, a worker's GC
    "observers", "target_events", "login_host", "read_ms", "nofile_soft", "socket_slab", "tcp_mem_pages",
    "cost_final_hold", "by_kind", "gc_ms", "gc_full",
    # TLS
    "handshake_hist", "tls_connect_rate", "mem_per_conn_bytes",
})
#: Keys connscale's own modules have no other dicts to read them from (bench/ scripts do: their results
#: are keyed by side and carry their own `rtt_ms`, `ghosts` ...).
PACKAGE_KEYS = RECORD_KEYS | {"client", "server", "rtt_ms", "ghosts", "stale", "elapsed_s", "summary", "worker",
                              "asked_rate", "connect_rate", "ghosts_max", "cost", "memory", "cores", "targets",
                              "listeners", "processes", "baseline", "pinging",
                              "handshake_ms", "resumed"}

#: Modules that define the records' wire forms (they alone spell their keys).
OWNERS = {
    "connscale/metrics/records.py", "connscale/metrics/workers.py", "connscale/diagnose/records.py",
}
#: (module, key): reads of dicts that are not these records, and why.
NOT_RECORDS = {
    # The report's own numbers, keyed as the page tags them (`data-k`).
    ("connscale/diagnose/report_verdict.py", "peak_open"),
    # The benchmark's own result, counted from the processes' status lines.
    ("bench/cpu_per_rtt.py", "open_at_end"),
    # The benchmark's own result row per case (made from the typed Summary in `run_case`).
    ("bench/servers.py", "peak_open"), ("bench/servers.py", "headline"),
    # The benchmark's own sampler of the run's process tree (TreeSampler.window).
    ("bench/run.py", "rss_bytes"),
    # The bench figures of user memory per connection, a constant keyed by side.
    ("connscale/diagnose/costs.py", "client"), ("connscale/diagnose/costs.py", "server"),
}
#: Names of values that are configuration dicts, whose `client:`/`server:` are config sections.
CONFIG_NAMES = {"cfg", "config", "base", "settings"}


def _string_key(node: ast.AST) -> tuple[str, ast.AST] | None:
    """(key, the object read) of `x["key"]` (a load) or `x.get("key", ...)`."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) \
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.slice.value, node.value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value, node.func.value
    return None


def record_key_reads(path: Path, rel: str) -> list[str]:
    keys = PACKAGE_KEYS if rel.startswith("connscale/") else RECORD_KEYS
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        hit = _string_key(node)
        if hit is None:
            continue
        key, base = hit
        if key not in keys or (rel, key) in NOT_RECORDS:
            continue
        if isinstance(base, ast.Name) and base.id in CONFIG_NAMES:
            continue
        found.append(f"{rel}:{node.lineno}: reads {key!r} by its name")
    return found


def sources() -> list[tuple[Path, str]]:
    files = sorted((REPO / "connscale").rglob("*.py")) + sorted((REPO / "bench").glob("*.py"))
    run = REPO / "bench" / "run"
    if run.exists():
        files.append(run)
    return [(p, str(p.relative_to(REPO))) for p in files if str(p.relative_to(REPO)) not in OWNERS]


def test_no_module_reads_the_timeline_incidents_or_the_explanation_through_string_keys() -> None:
    found = [hit for path, rel in sources() for hit in record_key_reads(path, rel)]
    assert not found, "\n".join(found)


def test_the_key_check_bites(tmp_path: Path) -> None:
    planted = tmp_path / "reader.py"
    planted.write_text('def f(r, cfg):\n    return r.get("client", {}).get("open"), r["clients"], '
                       'cfg["client"]["workers"], r["incidents"][0]["headline"]\n')
    assert sorted(record_key_reads(planted, "connscale/x.py")) == [
        "connscale/x.py:2: reads 'client' by its name", "connscale/x.py:2: reads 'clients' by its name",
        "connscale/x.py:2: reads 'headline' by its name", "connscale/x.py:2: reads 'incidents' by its name",
    ]
