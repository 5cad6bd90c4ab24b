"""Issue 16 in pieces: the metric registry, thresholds, baselines, JUnit, compare and runs, on the run
directories kept in tests/fixtures/old-runs (real runs, written before the schema) and copies of them
cut short. The two real runs that differ in one setting are tests/test_gate_e2e.py.

Expected values are read from the files as plain JSON here, not through the package's readers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import attrs
import pytest

from connscale.app import cli
from connscale.app.runs import list_runs
from connscale.config.loader import ConfigError, parse_config
from connscale.diagnose import baseline, hostdiff, thresholds
from connscale.diagnose.compare import compare
from connscale.diagnose.compare_page import render_html
from connscale.diagnose.headline import BY_NAME, METRICS, RunView, measure, readme_table
from connscale.diagnose.junit import junit_xml
from connscale.diagnose.records import Cause, Plateau, SearchResult, Slo, Summary
from connscale.diagnose.report import write_report
from connscale.diagnose.runfiles import read_run
from connscale.diagnose.search import capacity_line
from connscale.diagnose.units import BYTES, COUNT, MS, RATE, parse_percent
from connscale.metrics.handshakes import ConnectRate, HandshakeMs
from connscale.metrics.histograms import Percentiles
from connscale.metrics.records import Stats
from tests.support.procs import connscale
from tests.support.timelines import make_records, make_stats

REPO = Path(__file__).resolve().parent.parent
OLD_RUNS = Path(__file__).resolve().parent / "fixtures" / "old-runs"


def copy_run(kind: str, tmp_path: Path, name: str | None = None) -> Path:
    run_dir = tmp_path / (name or kind)
    shutil.copytree(OLD_RUNS / kind, run_dir)
    return run_dir


def raw_summary(kind: str) -> dict:
    return json.loads((OLD_RUNS / kind / "summary.json").read_text())


def measured(kind: str) -> dict[str, float]:
    run = read_run(OLD_RUNS / kind)
    return measure(RunView(run.summary, run.records))


# ---------------------------------------------------------------- units and the registry


@pytest.mark.parametrize("unit, text, value", [
    (COUNT, "500000", 500000), (COUNT, "500_000", 500000), (COUNT, "500,000", 500000), (COUNT, "500k", 500000),
    (COUNT, "1.5M", 1_500_000), (BYTES, "2KB", 2000), (BYTES, "2 KiB", 2048), (BYTES, "1.5MB", 1.5e6),
    (BYTES, "900", 900), (MS, "20", 20), (MS, "20ms", 20), (MS, "0.02s", 20), (MS, "500us", 0.5),
    (RATE, "10000", 10000), (RATE, "10k/s", 10000),
])
def test_a_limit_is_read_in_its_metrics_unit(unit, text, value):
    assert unit.parse(text) == pytest.approx(value)


@pytest.mark.parametrize("unit, text, problem", [
    (COUNT, "2KB", "'KB' is not a unit of a count"), (MS, "2KB", "'KB' is not a unit of time"),
    (BYTES, "20ms", "'ms' is not a unit of memory"), (COUNT, "many", "expected a number"),
    (COUNT, "1e999", "expected a finite number"),
])
def test_a_limit_in_another_unit_is_one_line(unit, text, problem):
    with pytest.raises(ValueError) as e:
        unit.parse(text)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_percentages():
    assert parse_percent("10%") == 10.0 and parse_percent(" 2.5 % ") == 2.5
    with pytest.raises(ValueError, match="expected a percentage like 10%"):
        parse_percent("10")


def test_the_metrics_of_real_runs_are_their_summaries_numbers():
    """held, the hold's RTT and the ramp rate come from summary.json; a search's capacity is its knee."""
    for kind in ("held", "failed", "search"):
        raw, got = raw_summary(kind), measured(kind)
        assert got["held"] == raw["held"] and got["peak_open"] == raw["peak_open"]
        assert got["failures"] == sum(raw["failures"].values()) and got["ghosts"] == raw["ghosts"]
        assert got["run_p99_ms"] == raw["rtt_ms"]["p99"]
        if kind == "search":
            knee = raw["search"]["knee"]
            plateau = [p for p in raw["search"]["curve"] if p["passed"] and p["level"] == knee][-1]
            assert got["search.capacity"] == knee and got["hold_p99_ms"] == plateau["rtt_ms"]["p99"]
            assert "ramp_rate" not in got  # a search has no ramp steps
        else:
            assert "search.capacity" not in got
            assert got["hold_p99_ms"] == raw["rtt_final_hold_ms"]["p99"]
            steps = [s for s in raw["steps"] if s["seconds"]]
            rate = sum(s["rate_achieved"] * s["seconds"] for s in steps) / sum(s["seconds"] for s in steps)
            assert got["ramp_rate"] == round(rate)
        assert got["mem_per_conn_server"] > 0
        # A hold of a few seconds at 2,000 connections uses less CPU than the clock's ticks can divide.
        assert "cpu_per_rtt_server_us" not in got


def test_cpu_per_round_trip_is_each_sides_cpu_over_the_holds_round_trips():
    records = make_records(per_step=20000)   # workers' CPU grows with what they hold
    got = measure(RunView(None, make_stats(per_step=20000)))

    def cpu(r: dict, side: str) -> float:
        rows = r["server_workers"] if side == "server" else r["clients"]["local"]["workers"]
        return sum(w["resources"]["cpu_user_s"] + w["resources"]["cpu_system_s"] for w in rows)

    hold = [i for i, r in enumerate(records) if r["phase"] == "final_hold"]
    trips = records[hold[-1]]["client"]["pongs"] - records[hold[0] - 1]["client"]["pongs"]
    for side in ("server", "client"):
        spent = cpu(records[hold[-1]], side) - cpu(records[hold[0] - 1], side)
        assert spent >= 0.1 and got[f"cpu_per_rtt_{side}_us"] == pytest.approx(spent / trips * 1e6, abs=0.01)


def test_a_run_written_with_its_metrics_is_measured_as_it_wrote_them(tmp_path):
    run_dir = copy_run("held", tmp_path)
    raw = raw_summary("held")
    raw["metrics"] = {"held": 2000, "hold_p99_ms": 0.5}  # what a run wrote: wins over the files
    (run_dir / "summary.json").write_text(json.dumps(raw))
    run = read_run(run_dir)
    got = measure(RunView(run.summary, run.records))
    assert got["hold_p99_ms"] == 0.5 and got["mem_per_conn_server"] == measured("held")["mem_per_conn_server"]


def test_tls_metrics_are_the_timelines_handshakes_and_a_run_without_tls_has_none():
    """tls_handshake_p99_ms and tls_connect_rate_max: from each second's handshake histogram when the
    summary has none (a run that wrote no metrics), as the summary wrote them when it did."""
    from connscale.metrics.histograms import encode_histogram, new_histogram

    records = make_records()
    assert not {"tls_handshake_p99_ms", "tls_connect_rate_max"} & set(measure(RunView(None, make_stats())))
    merged, per_second = new_histogram(), []
    for i, r in enumerate(records[:-1]):      # the stop second's handshakes are not the run's
        h = new_histogram()
        h.record_value(2000, 10 + i)          # 2 ms
        h.record_value(90_000, i % 3)         # 90 ms, now and then
        r["handshake_hist"] = encode_histogram(h)
        merged.add(h)
        per_second.append(h.get_total_count())
    stop = new_histogram()
    stop.record_value(500_000, 1000)          # a drain's: would be the p99 and the best second if counted
    records[-1]["handshake_hist"] = encode_histogram(stop)
    stats = [Stats.from_wire(r) for r in records]
    got = measure(RunView(None, stats))
    assert got["tls_handshake_p99_ms"] == round(merged.get_value_at_percentile(99) / 1000.0, 3) > 2
    assert got["tls_connect_rate_max"] == max(per_second)
    summary = attrs.evolve(read_run(OLD_RUNS / "held").summary, handshake_ms=HandshakeMs(1.0, 2.0, 3.5, 4.0, 50),
                           tls_connect_rate=ConnectRate(25.0, 12.5))
    written = measure(RunView(summary, stats))
    assert written["tls_handshake_p99_ms"] == 3.5 and written["tls_connect_rate_max"] == 25


def test_the_readme_lists_the_metrics_the_registry_defines():
    readme = (REPO / "README.md").read_text()
    assert readme_table() in readme, "README.md should list the metrics:\n\n" + readme_table()
    assert len({m.name for m in METRICS}) == len(METRICS)


# ---------------------------------------------------------------- thresholds


def test_thresholds_pass_and_fail_as_written():
    got = measured("held")   # held 2000, failures 0, hold p99 0.683 ms
    lines = [("held >= 2000", "t0"), ("held > 2000", "t1"), ("failures == 0", "t2"), ("hold_p99_ms <= 1", "t3"),
             ("hold_p99_ms <= 500us", "t4"), ("mem_per_conn_server <= 2KB", "t5"), ("ramp_rate >= 10k", "t6"),
             ("search.capacity >= 1000", "t7"), ("ghosts != 0", "t8")]
    parsed, problems = thresholds.parse_all(lines)
    assert not problems
    results = thresholds.evaluate_all(parsed, got)
    assert [r.passed for r in results] == [True, False, True, True, False, True, False, False, False]
    assert results[7].value is None and results[7].note == "not measured in this run (not a search)"
    assert thresholds.describe(results[0]) == "PASS held >= 2000: measured 2,000 (limit >= 2,000)"
    assert thresholds.describe(results[4]) == "FAIL hold_p99_ms <= 500us: measured 0.683 ms (limit <= 0.500 ms)"
    assert results[5].limit == 2000 and results[5].unit == "B"


@pytest.mark.parametrize("line, problem", [
    ("helt >= 5", "where: unknown metric 'helt' (did you mean 'held'?); valid metrics: held, peak_open, "),
    ("held => 5", "where: 'held => 5': expected METRIC OP LIMIT"),
    ("held >= 2KB", "where: 'held >= 2KB': held: 'KB' is not a unit of a count"),
])
def test_a_threshold_that_cannot_be_read_names_where_and_why(line, problem):
    with pytest.raises(thresholds.ThresholdError) as e:
        thresholds.parse(line, "where")
    assert str(e.value).startswith(problem) and "\n" not in str(e.value)


def test_scenario_thresholds_is_a_list_of_lines():
    cfg = parse_config({"scenario": {"thresholds": ["held >= 5", " failures == 0 "]}})
    assert cfg.scenario.thresholds == ("held >= 5", "failures == 0")
    assert parse_config({"scenario": {"thresholds": "held >= 5"}}).scenario.thresholds == ("held >= 5",)
    with pytest.raises(ConfigError, match=r"scenario.thresholds: \[1\]: expected one line"):
        parse_config({"scenario": {"thresholds": ["held >= 5", {"held": 5}]}})


def test_a_run_with_an_unknown_metric_is_a_config_error_before_anything_starts(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("scenario: {target: 1000, thresholds: ['held >= 1000', 'p99 <= 5']}\nrun: {dir: runs}\n")
    r = subprocess.run(connscale("run", "-c", str(config), "--threshold", "failures = 0", "--baseline",
                                 str(tmp_path / "nowhere"), "--tolerance", "fast"),
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.splitlines() == [
        "connscale run: bad configuration:",
        "scenario.thresholds[1]: unknown metric 'p99'; valid metrics: " + ", ".join(m.name for m in METRICS),
        "--threshold: 'failures = 0': expected METRIC OP LIMIT, e.g. 'held >= 500000' (OP one of >= <= > < == !=)",
        "--tolerance 'fast': expected a percentage like 10%, got 'fast'",
        f"--baseline: {tmp_path / 'nowhere'}: no such run directory",
    ]
    assert not (tmp_path / "runs").exists() and "Traceback" not in r.stderr


# ---------------------------------------------------------------- baselines and what changed


def test_a_metric_regresses_beyond_its_tolerance_in_its_own_direction():
    held, p99 = BY_NAME["held"], BY_NAME["hold_p99_ms"]
    assert baseline.check(held, 1000, 1000, 10).outcome == "pass"
    assert baseline.check(held, 901, 1000, 10).outcome == "pass"
    worse = baseline.check(held, 899, 1000, 10)
    assert worse.regressed and worse.change_pct == -10.1
    assert worse.note == "899 against 1,000: 10.1% worse (tolerance 10%, higher is better)"
    assert baseline.check(held, 5000, 1000, 0).outcome == "pass"          # better is never a regression
    assert baseline.check(p99, 1.2, 1.0, 10).regressed and not baseline.check(p99, 0.5, 1.0, 0).regressed
    failures = BY_NAME["failures"]
    assert baseline.check(failures, 3, 0, 10).regressed and baseline.check(failures, 3, 0, 10).change_pct is None
    assert baseline.check(failures, 0, 0, 0).outcome == "pass"
    skipped = baseline.check(BY_NAME["search.capacity"], None, 4000, 10)
    assert skipped.outcome == "skipped" and skipped.note == "not measured in this run"


def test_tolerances_default_and_per_metric():
    tolerances, problems = baseline.parse_tolerances(["5%", "hold_p99_ms=50%", "mem_per_conn_server=20%"])
    assert not problems and tolerances.default == 5 and tolerances.of("hold_p99_ms") == 50
    assert "mem_per_conn_server" in [m.name for m in tolerances.compared()]   # named: compared too
    assert [m.name for m in baseline.Tolerances().compared()] == [m.name for m in METRICS if m.baseline]
    _, problems = baseline.parse_tolerances(["nope=5%", "held=lots"])
    assert problems[0].startswith("--tolerance 'nope=5%': unknown metric 'nope'; valid metrics: held, ")
    assert problems[1] == "--tolerance 'held=lots': expected a percentage like 10%, got 'lots'"


def test_the_manifest_diff_names_what_changed_and_leaves_out_what_always_does():
    a = json.loads((OLD_RUNS / "held" / "manifest.json").read_text())
    b = json.loads(json.dumps(a))
    b["sysctls"]["net.core.somaxconn"] = 128
    b["sysctls"]["net.ipv4.ip_local_port_range"] = [40000, 40399]
    b["rlimits"]["nofile"]["soft"] = 1024
    b["written"] = "later"
    b["host"]["ram_available_bytes"] = 1
    b["argv"] = ["other"]
    del b["versions"]["hdrhistogram"]
    changes = {d.key: d.values for d in hostdiff.diff([a, b])}
    assert changes == {
        "sysctls.net.core.somaxconn": (str(a["sysctls"]["net.core.somaxconn"]), "128"),
        "sysctls.net.ipv4.ip_local_port_range": (" ".join(map(str, a["sysctls"]["net.ipv4.ip_local_port_range"])),
                                                 "40000 40399"),
        "rlimits.nofile.soft": (str(a["rlimits"]["nofile"]["soft"]), "1024"),
        "versions.hdrhistogram": (a["versions"]["hdrhistogram"], None),
    }
    assert list(changes)[0].startswith("sysctls")   # the host's limits first, software after
    assert hostdiff.diff([a, None]) == () and hostdiff.diff([a, a]) == ()


def test_a_baseline_comparison_says_how_much_and_what_changed(tmp_path):
    base = read_run(OLD_RUNS / "search")
    now = read_run(OLD_RUNS / "held")
    tolerances, _ = baseline.parse_tolerances(["10%"])
    result = baseline.compare(measured("held"), now.manifest, measured("search"), base.manifest, "runs/search",
                              tolerances)
    outcomes = {c.metric: c.outcome for c in result.checks}
    # held 2,000 against the search's 4,000; a ramp has no capacity, a search no ramp rate.
    assert outcomes["held"] == "regressed" and outcomes["search.capacity"] == "skipped"
    assert outcomes["ramp_rate"] == "skipped" and outcomes["failures"] == "pass"
    assert baseline.describe(result.checks[0]) == \
        "FAIL held: 2,000 against 4,000: 50.0% worse (tolerance 10%, higher is better)"
    assert "config.scenario.mode" in {d.key for d in result.changed} and not result.passed


# ---------------------------------------------------------------- the capacity line


def plateau(index: int, level: int, passed: bool, **kw) -> Plateau:
    return Plateau(index=index, level=level, reached=kw.pop("reached", True), seconds=3, open=level, passed=passed,
                   **kw)


def test_a_search_reads_as_a_capacity_with_the_metric_that_failed_above_it():
    slo = Slo(p99_ms=100.0)
    slow = plateau(2, 2000, False, rtt_ms=Percentiles(1.0, 2.0, 180.5, 300.0), pings=100)
    result = SearchResult(knee=1000, failed_at=2000, slo=slo, curve=(plateau(1, 1000, True), slow))
    assert capacity_line(result) == \
        "largest count meeting the SLO: 1,000 (the next step, 2,000, failed on p99_ms = 180.5 ms)"
    # A plateau cut by its routes, as written before plateaus kept their misses.
    routes = plateau(2, 2000, False, reached=False, cause=Cause("routes"))
    routes = attrs.evolve(routes, open=1400)
    result = attrs.evolve(result, curve=(plateau(1, 1000, True), routes))
    assert capacity_line(result) == "largest count meeting the SLO: 1,000 (the next step, 2,000, failed on routes = 1,400)"
    failing = plateau(1, 1000, False, failures={"connect:EADDRNOTAVAIL": 12})
    assert capacity_line(SearchResult(knee=0, failed_at=1000, slo=slo, curve=(failing,))) == \
        "no count met the SLO (the first step, 1,000, failed on failures = 12)"
    assert capacity_line(Summary.from_wire(raw_summary("search")).search) == \
        "largest count meeting the SLO: 4,000 (every step passed, up to the search's upper bound, scenario.target)"


# ---------------------------------------------------------------- JUnit


def test_the_junit_file_has_a_case_per_threshold_and_comparison_and_counts_its_failures(tmp_path):
    summary = Summary.from_wire(raw_summary("held"))
    parsed, _ = thresholds.parse_all([("held >= 2000", "a"), ("hold_p99_ms <= 0.1", "b"), ("ghosts == 0", "c")])
    got = measured("held")
    tolerances, _ = baseline.parse_tolerances(["10%"])
    base = baseline.compare(got, None, measured("search"), None, "runs/<search> & co", tolerances)
    summary = attrs.evolve(summary, metrics=got, thresholds=thresholds.evaluate_all(parsed, got), baseline=base)
    root = ET.fromstring(junit_xml(summary))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == 1 + 3 + len(base.checks) == int(suite.get("tests"))
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["hold_p99_ms <= 0.1", "held vs runs/<search> & co"] and suite.get("failures") == "2"
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    assert skipped == ["search.capacity vs runs/<search> & co", "ramp_rate vs runs/<search> & co"]
    assert cases[0].get("classname") == "connscale.run" and cases[0].find("failure") is None
    # A run that did not hold fails its case, whatever its thresholds.
    failed_run = Summary.from_wire(raw_summary("failed"))
    root = ET.fromstring(junit_xml(failed_run))
    assert root.find("testsuite").get("failures") == "1"


# ---------------------------------------------------------------- compare, runs, and run directories that lack things


def test_compare_says_better_and_worse_by_each_metrics_sense():
    runs = [read_run(OLD_RUNS / k) for k in ("held", "failed", "search")]
    c = compare(runs)
    rows = {r.metric: r for r in c.metrics}
    assert rows["held"].values == (2000, 0, 4000) and rows["held"].direction == ("", "worse", "better")
    assert rows["held"].change_pct == (None, -100.0, 100.0)
    assert rows["failures"].direction == ("", "worse", "same") and rows["failures"].change_pct[1] is None
    p99 = rows["hold_p99_ms"]
    assert p99.direction[2] == ("worse" if p99.values[2] > p99.values[0] else "better")
    assert rows["search.capacity"].values == (None, None, 4000) and rows["search.capacity"].direction == ("", "", "")
    assert "search.capacity: not measured in A, B" in c.notes and "ramp_rate: not measured in C" in c.notes
    assert any("different targets" in n for n in c.notes) and any("different modes" in n for n in c.notes)
    assert {d.key for d in c.manifest} >= {"config.scenario.mode", "config.scenario.target"}


def test_compare_reads_broken_run_directories_as_far_as_they_go(tmp_path, capsys):
    cut = copy_run("held", tmp_path, "cut")
    text = (cut / "timeline.jsonl").read_text()
    (cut / "timeline.jsonl").write_text(text[: len(text) - 700])             # a crash mid-line
    (cut / "summary.json").write_text((cut / "summary.json").read_text()[:300])  # and mid-summary
    bare = copy_run("search", tmp_path, "bare")
    (bare / "timeline.jsonl").unlink()
    (bare / "manifest.json").unlink()
    old = copy_run("failed", tmp_path, "old")
    out = tmp_path / "page.html"
    assert cli.main(["compare", str(old), str(cut), str(bare), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "B left no readable summary.json: its metrics come from its timeline alone" in printed
    assert "C has no timeline.jsonl: it compares on what its summary wrote, without curves" in printed
    assert "no manifest in C" in printed and "summary.json: not JSON" in printed
    assert "timeline.jsonl: 1 line skipped" in printed and f"page: {out}" in printed
    page = out.read_text()
    assert "Not read: <span" in page and page.count("<figure") == 4
    assert cli.main(["compare", str(old), str(cut), str(bare), "--json", "-o", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["runs"]] == ["old", "cut", "bare"] and data["runs"][1]["verdict"] == ""
    held = next(m for m in data["metrics"] if m["metric"] == "peak_open")
    assert held["values"] == [2000, 2000, 4000]


def test_compare_refuses_what_is_no_run_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    old = copy_run("held", tmp_path)
    assert cli.main(["compare", str(old), str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"connscale compare: {tmp_path / 'nowhere'}: no such run directory\n"
    assert cli.main(["compare", str(old), str(empty)]) == 2
    assert capsys.readouterr().err == (f"connscale compare: {empty}: nothing to compare (no summary.json; "
                                       "no timeline.jsonl; no manifest.json)\n")
    assert cli.main(["compare", str(old)]) == 2


def test_the_compare_page_escapes_what_the_runs_say(tmp_path):
    run_dir = copy_run("held", tmp_path, "a<b>")
    raw = raw_summary("held")
    raw["explanation"]["headline"] = "<script>alert(1)</script>"
    (run_dir / "summary.json").write_text(json.dumps(raw))
    page = render_html([read_run(run_dir), read_run(OLD_RUNS / "failed")])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&lt;b&gt;" in page


def test_runs_lists_run_directories_newest_first(tmp_path, capsys):
    for kind in ("search", "held", "failed"):
        copy_run(kind, tmp_path)
    crashed = copy_run("held", tmp_path, "crashed")
    (crashed / "summary.json").unlink()
    (tmp_path / "not-a-run").mkdir()
    rows = list_runs(tmp_path)
    assert [r.run for r in rows] == ["search", "failed", "crashed", "held"]   # by when each started
    assert rows[0].capacity == 4000 and rows[0].verdict == "knee"
    assert rows[2].verdict == "(no summary)" and rows[2].lacks == ("no summary.json",)
    assert rows[2].held is None and rows[2].hold_p99_ms == measured("held")["hold_p99_ms"]  # from its timeline
    assert cli.main(["runs", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["when", "run", "verdict", "target", "held", "hold_p99_ms", "capacity", "duration_s",
                                "gate"]
    assert lines[1].split()[2:8] == ["search", "knee", "4,000", "4,000", "1.111", "4,000"]
    assert lines[-1] == "crashed: no summary.json"
    assert cli.main(["runs", str(tmp_path / "nowhere")]) == 2


def test_the_report_shows_the_gates_and_a_search_its_capacity(tmp_path):
    run_dir = copy_run("held", tmp_path)
    summary = Summary.from_wire(raw_summary("held"))
    got = measured("held")
    parsed, _ = thresholds.parse_all([("held >= 2000", "scenario.thresholds[0]"), ("hold_p99_ms <= 0.1", "x")])
    tolerances, _ = baseline.parse_tolerances(["10%"])
    base = baseline.compare(got, None, measured("search"), None, "runs/search", tolerances)
    summary = attrs.evolve(summary, metrics=got, thresholds=thresholds.evaluate_all(parsed, got), baseline=base)
    (run_dir / "summary.json").write_text(json.dumps(summary.to_wire()))
    page = write_report(run_dir).read_text()
    assert "GATES FAILED" in page and '<h2 id="gates">Gates</h2>' in page
    assert '<span class="n" data-k="threshold.1.value">0.683</span>' in page
    assert '<span class="n" data-k="threshold.1.limit">0.100</span>' in page
    assert '<span class="n" data-k="baseline.held.change">-50.0</span>%' in page
    search = write_report(copy_run("search", tmp_path)).read_text()
    assert "largest count meeting the SLO: 4,000" in search
    assert os.path.getsize(run_dir / "report.html") > 10_000


def test_a_baseline_cut_short_is_compared_as_far_as_it_goes(tmp_path):
    import argparse

    from connscale.app import gate

    base = copy_run("search", tmp_path, "base")
    (base / "summary.json").write_text((base / "summary.json").read_text()[:400])   # a crash mid-summary
    (base / "manifest.json").unlink()
    args = argparse.Namespace(threshold=["held >= 1000"], tolerance=["5%"], baseline=str(base), junit=None)
    judge = gate.from_options(parse_config({}), args)
    now = read_run(OLD_RUNS / "held")
    summary = gate.judge(judge, now.summary, now.records, now.manifest)
    b = summary.baseline
    assert b is not None and b.lacks[0] == "no manifest.json" and b.lacks[1].startswith("summary.json: not JSON: ")
    # Its timeline still gives what it measured: the peak it held, the hold's RTT of no final hold (none).
    checks = {c.metric: c.outcome for c in b.checks}
    assert checks["held"] == "skipped" and checks["failures"] == "pass" and b.changed == ()
    lines = gate.lines(summary)
    assert lines[0] == "threshold PASS held >= 1000: measured 2,000 (limit >= 1,000)"
    assert lines[1:3] == [f"baseline {base}: no manifest.json", f"baseline {base}: {b.lacks[1]}"]
    assert lines[-1] == f"gate: PASSED (0 of 1 thresholds failed; 0 metrics regressed against {base})"
    # A directory with nothing to compare stops the run before it starts.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(gate.GateError) as e:
        gate.from_options(parse_config({}), argparse.Namespace(threshold=[], tolerance=[], baseline=str(empty),
                                                               junit=None))
    assert e.value.problems == [f"--baseline: {empty}: nothing to compare with (no summary.json; no timeline.jsonl; "
                                "no manifest.json)"]


def test_memory_and_connscales_own_cost_come_from_the_summarys_tables():
    from connscale.diagnose.records import MemoryMoment, MemoryRow, MemoryTable
    from connscale.metrics.cost import Cost

    run = read_run(OLD_RUNS / "held")
    table = MemoryTable(baseline=MemoryMoment(1.0, 0), rows=(
        MemoryRow("server_rss", "server process RSS", "user", "server", 300.0, 320.5),
        MemoryRow("connscale_server_rss", "", "user", "server", 150.0, 160.0),
        MemoryRow("connscale_client_rss", "", "user", "client", 400.0, None),
        MemoryRow("kernel", "kernel total", "kernel", "host", 4000.0, 4100.4)))
    summary = attrs.evolve(run.summary, memory=table, cost_final_hold=Cost(cores=0.456, rss_bytes=123_000_000))
    got = measure(RunView(summary, run.records))
    # The observed server's RSS after pinging; the client's just opened (no later figure); the kernel's.
    assert got["mem_per_conn_server"] == 320 and got["mem_per_conn_client"] == 400
    assert got["kernel_mem_per_conn"] == 4100 and got["own_cores"] == 0.46 and got["own_rss"] == 123_000_000
    # Without the table (a run before the observer), the workers' growth at the peak, as the report had it.
    assert measure(RunView(run.summary, run.records))["mem_per_conn_server"] == 197
    assert "kernel_mem_per_conn" not in measure(RunView(run.summary, run.records))
    parsed, _ = thresholds.parse_all([("own_cores <= 50%", "x"), ("kernel_mem_per_conn <= 4KB", "y")])
    assert [r.passed for r in thresholds.evaluate_all(parsed, got)] == [True, False]
