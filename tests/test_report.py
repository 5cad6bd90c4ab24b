"""The report: every number it shows is recomputed here from the timeline,
independently of the report's own code; the page needs nothing but itself."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest

from connscale.diagnose.curve import CurvePoint, curve_points, find_knee
from connscale.diagnose.manifest import collect_manifest, redact
from connscale.diagnose.report import (
    ReportError,
    load_run,
    render_html,
    write_csv,
    write_report,
)
from tests.support.procs import connscale
from tests.support.timelines import make_records, make_stats, write_run
from tests.support.reportpage import check_numbers, merged, shown_numbers


# ---------------------------------------------------------------- an independent reading of a timeline


# ---------------------------------------------------------------- tests

def test_every_number_on_a_held_run_equals_the_timeline(tmp_path: Path) -> None:
    records = make_records()
    summary = {"verdict": "held", "reason": "", "target": 6000, "held": 6000,
               "steps": [{"step": 1, "target": 2000, "started": 1.0, "seconds": 2.012, "rate_asked": 2000.0,
                          "rate_achieved": 994.0},
                         {"step": 2, "target": 4000, "started": 7.0, "seconds": None, "rate_asked": 2000.0,
                          "rate_achieved": None}]}
    run_dir = write_run(tmp_path / "run", records, summary)
    path = write_report(run_dir)
    page = path.read_text()
    assert path == run_dir / "report.html"
    assert check_numbers(page, records, summary) > 40
    assert 'class="badge held">HELD' in page
    verdict = page.split('id="verdict">')[1].split("</section>")[0]
    assert "Held" in verdict and 'data-k="rtt_final_hold_p99"' in verdict


def test_failed_run_explains_the_top_cause_with_its_fix(tmp_path: Path) -> None:
    records = make_records(fail_at_step=2)
    summary = {"verdict": "failed", "reason": "failures exceeded scenario.max_failures=0: connect:EADDRNOTAVAIL=40",
               "target": 6000, "held": 0, "failures": {"connect:EADDRNOTAVAIL": 40}}
    page = write_report(write_run(tmp_path / "run", records, summary)).read_text()
    check_numbers(page, records, summary)
    verdict = page.split('id="verdict">')[1].split("</section>")[0]
    assert "Stopped at" in verdict and "failures exceeded scenario.max_failures=0" in verdict
    assert "EADDRNOTAVAIL" in verdict and "ip_local_port_range" in verdict  # the advice, with its fix
    assert shown_numbers(verdict)["failures.connect:EADDRNOTAVAIL"] == 40


def test_the_walls_explanation_and_incidents_are_shown_when_the_summary_has_them(tmp_path: Path) -> None:
    records = make_records(fail_at_step=2)
    summary = {"verdict": "failed", "reason": "step 2 fell behind", "target": 6000, "held": 0,
               "explanation": {"headline": "The clients ran out of ephemeral ports <at> 127.0.0.2",
                               "wall": "ephemeral_ports", "side": "client",
                               "evidence": ["40 x connect:EADDRNOTAVAIL"],
                               "fix": ["add --source-ip 127.0.0.3-127.0.0.9"], "measuring_side_saturated": False},
               "incidents": [{"t": 1.0, "elapsed_s": 9.0, "trigger": "failures", "wall": "ephemeral_ports",
                              "headline": "EADDRNOTAVAIL on connect", "evidence": ["40 failures in 1 s"],
                              "fix": ["add source IPs"], "open": 3960, "kernel": {"tcp_inuse": 7000}}]}
    page = write_report(write_run(tmp_path / "run", records, summary)).read_text()
    verdict = page.split('id="verdict">')[1].split("</section>")[0]
    assert "ran out of ephemeral ports &lt;at&gt; 127.0.0.2" in verdict  # escaped
    assert "ephemeral_ports" in verdict and "<li>40 x connect:EADDRNOTAVAIL</li>" in verdict
    assert "<li>add --source-ip 127.0.0.3-127.0.0.9</li>" in verdict
    incidents = page.split("<h2>Incidents</h2>")[1].split("</table>")[0]
    assert "EADDRNOTAVAIL on connect" in incidents and "<li>add source IPs</li>" in incidents
    assert "9 s" in incidents and "tcp_inuse" in incidents
    # Without a summary, incidents recorded on timeline lines are shown all the same.
    records[9]["incidents"] = [{"elapsed_s": 10.0, "trigger": "ghosts", "wall": "accept_queue", "headline": "ghosts"}]
    page = write_report(write_run(tmp_path / "bare", records, None)).read_text()
    assert "accept_queue" in page.split("<h2>Incidents</h2>")[1]


def test_report_needs_only_the_run_directory_and_nothing_from_the_network(tmp_path: Path) -> None:
    records = make_records()
    run_dir = write_run(tmp_path / "run", records, summary=None, manifest=False)
    page = render_html(load_run(run_dir))
    check_numbers(page, records, None)
    assert "NO VERDICT" in page and "no <code>summary.json</code>" in page
    assert "No manifest.json" in page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:image/png;base64,"), attr
    assert "@import" not in page and "url(" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 8
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_manifest_lists_limits_and_hides_secrets(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    for name, value in {"fs/file-max": "9223372036854775807", "fs/nr_open": "1048576",
                        "net/ipv4/ip_local_port_range": "32768\t60999", "net/core/somaxconn": "4096",
                        "net/ipv4/tcp_mem": "1 2 3"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(value + "\n")
    config = {"control": {"secret": "<redacted>", "secret_file": "/etc/s"},
              "clients": {"c1": {"env": {"API_TOKEN": "hunter2", "LANG": "C"}}}}
    m = collect_manifest(config, root=str(root))
    assert m["sysctls"]["net.ipv4.ip_local_port_range"] == [32768, 60999]
    assert m["sysctls"]["net.ipv4.tcp_mem"] == [1, 2, 3]
    assert m["sysctls"]["net.core.somaxconn"] == 4096
    assert m["sysctls"]["net.netfilter.nf_conntrack_max"] == "not loaded"
    assert m["sysctls"]["net.ipv4.tcp_tw_reuse"] is None  # unreadable here, not invented
    assert m["rlimits"]["nofile"]["hard"] >= m["rlimits"]["nofile"]["soft"]
    assert m["host"]["cores"] >= 1 and m["host"]["ram_bytes"] > 0 and m["host"]["kernel"].startswith("Linux")
    assert m["versions"]["connscale"] and m["versions"]["python"]
    assert m["config"]["clients"]["c1"]["env"] == {"API_TOKEN": "<redacted>", "LANG": "C"}
    assert m["config"]["control"]["secret_file"] == "/etc/s"
    assert "hunter2" not in json.dumps(m)
    assert redact({"password": None}) == {"password": None}


def test_a_fleet_runs_report_shows_each_agents_host_manifest(tmp_path: Path) -> None:
    summary = {"verdict": "held", "reason": "", "target": 6000, "held": 6000,
               "manifests": {"hub": "manifest.json", "h2": "manifest-h2.json", "h3": "manifest-h3.json"}}
    run_dir = write_run(tmp_path / "run", make_records(), summary)
    agent_host = json.loads((run_dir / "manifest.json").read_text())
    agent_host["host"]["hostname"] = "agent-host-h2"
    (run_dir / "manifest-h2.json").write_text(json.dumps(agent_host))
    page = write_report(run_dir).read_text()
    h2 = page.split("<h2>Manifest of agent h2</h2>")[1]
    assert "agent-host-h2" in h2.split("<h2>")[0]
    # One host's manifest lost is said there; the page still renders.
    assert "<h3>h3</h3><p class=\"muted\">manifest-h3.json is missing or unreadable.</p>" in page


def test_the_verdict_says_what_each_kind_of_run_needs_said(tmp_path: Path) -> None:
    from connscale.diagnose.report_numbers import compute_numbers
    from connscale.diagnose.report_verdict import verdict
    from connscale.metrics.series import build_series

    def judged(name: str, summary: dict | None, **kw: int):
        run = load_run(write_run(tmp_path / name, make_records(**kw), summary, manifest=False))
        points = curve_points(run.records)
        return verdict(run, compute_numbers(run, build_series(run.records)), find_knee(points), points)

    held = judged("held", {"verdict": "held", "reason": "", "target": 6000, "held": 6000})
    assert (held.css, held.record, held.held, held.stopped_because, held.failures, held.no_failure) == \
        ("held", "run", True, None, None, False)
    assert held.explanation is not None and held.explanation.headline is None  # a held run names no wall
    assert held.curve is not None and held.knee is None
    # A failed run without a failure: its derived explanation stops it; nothing to blame is said.
    stalled = judged("stalled", {"verdict": "failed", "reason": "time limit", "target": 9000, "held": 0})
    assert stalled.css == "failed" and stalled.stopped_because is None and stalled.no_failure
    assert stalled.explanation is not None and stalled.explanation.headline.startswith("Stopped at 6,000")
    # No summary: the timeline's failures are blamed, and no verdict is given.
    bare = judged("bare", None, fail_at_step=2)
    assert (bare.css, bare.record, bare.held, bare.explanation, bare.no_failure) == ("unknown", "none", False, None, False)
    assert bare.failures is not None and bare.failures.cause == "EADDRNOTAVAIL"
    assert [(k, n.text) for k, n in bare.failures.listed] == [("connect:EADDRNOTAVAIL", "80")]
    # A hub's record: its headline opens it, its reason is said, it has no verdict to explain.
    hub = judged("hub", {"verdict": "recorded", "kind": "hub", "reason": "stopped by the operator", "target": 0,
                         "held": 0, "explanation": {"headline": "2 agents held 4,000"}})
    assert (hub.record, hub.hub_headline, hub.stopped_because, hub.explanation, hub.failures, hub.no_failure) == \
        ("hub", "2 agents held 4,000", "stopped by the operator", None, None, False)


def test_knee_is_where_p99_leaves_the_low_load_band() -> None:
    flat = [CurvePoint(n, "", 1.0, 2.0 + (n % 3) * 0.3, 10) for n in (1000, 2000, 3000, 4000)]
    assert find_knee(flat) is None
    bent = flat[:2] + [CurvePoint(3000, "", 5.0, 40.0, 10), CurvePoint(4000, "", 9.0, 90.0, 10)]
    knee = find_knee(bent)
    assert knee is not None and knee.open == 3000 and knee.before_open == 2000 and knee.p99 == 40.0
    # A loopback wobble (0.3 -> 0.9 ms) is no knee: the rise must also exceed KNEE_MIN_MS.
    assert find_knee([CurvePoint(1, "", 0.1, 0.3, 1), CurvePoint(2, "", 0.1, 0.9, 1)]) is None
    # Nor is one noisy plateau the next one contradicts (a busy box): the rise must last.
    noisy = flat[:3] + [CurvePoint(4000, "", 2.0, 12.0, 10), CurvePoint(5000, "", 1.5, 2.5, 10)]
    assert find_knee(noisy) is None
    assert find_knee(noisy + [CurvePoint(6000, "", 5.0, 30.0, 10)]).open == 6000


def test_scaling_curve_has_one_point_per_plateau_and_finds_the_knee() -> None:
    points = curve_points(make_stats(steps=4, knee_at_step=3))
    assert [p.label for p in points] == ["hold:1", "hold:2", "hold:3", "final_hold"]
    assert [p.open for p in points] == [2000, 4000, 6000, 8000]
    knee = find_knee(points)
    assert knee is not None and knee.open == 6000


def test_the_knee_sentence_says_the_timelines_numbers(tmp_path: Path) -> None:
    records = make_records(steps=4, knee_at_step=3)
    summary = {"verdict": "held", "reason": "", "target": 8000, "held": 8000}
    page = write_report(write_run(tmp_path / "run", records, summary)).read_text()
    check_numbers(page, records, summary)
    shown = shown_numbers(page)
    assert shown["knee.open"] == 6000 and shown["knee.before_open"] == 4000
    assert "that is the knee of the curve" in page


def test_the_failures_figure_is_the_same_whatever_order_its_causes_arrive_in() -> None:
    import attrs

    from connscale.diagnose import plots
    from connscale.metrics.series import build_series

    s = build_series(make_stats(fail_at_step=2))
    tied = {"connect:EADDRNOTAVAIL": [0] * (len(s) - 1) + [5], "connect:ECONNREFUSED": [0] * (len(s) - 1) + [5],
            "ping:timeout": [1] * len(s)}
    figures = {plots.failures_by_cause(attrs.evolve(s, failures_by_cause=dict(order)))
               for order in (list(tied.items()), list(reversed(tied.items())))}
    assert len(figures) == 1


def test_csv_has_per_second_percentiles_recomputed_from_the_histograms(tmp_path: Path) -> None:
    records = make_records()
    run_dir = write_run(tmp_path / "run", records)
    path = write_csv(run_dir)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == len(records)
    for row, r in zip(rows, records):
        assert row["phase"] == r["phase"] and int(row["open"]) == r["client"]["open"]
        if r["rtt_hist"]:
            h = merged([r])
            assert int(row["rtt_count"]) == h.get_total_count()
            assert float(row["rtt_p50_ms"]) == pytest.approx(r["rtt_window_ms"]["p50"], abs=0.0005)
            assert float(row["rtt_p99_ms"]) == pytest.approx(r["rtt_window_ms"]["p99"], abs=0.0005)
            assert float(row["rtt_p99_9_ms"]) == pytest.approx(h.get_value_at_percentile(99.9) / 1000, abs=0.0005)
        else:
            assert row["rtt_p50_ms"] == "" and row["rtt_count"] == "0"


def test_connscale_report_command(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", make_records())
    r = subprocess.run(connscale("report", str(run_dir), "--csv"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (run_dir / "report.html").exists() and (run_dir / "rtt_per_second.csv").exists()
    assert str(run_dir / "report.html") in r.stdout
    bad = subprocess.run(connscale("report", str(tmp_path / "nope")), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no such run directory" in bad.stderr


def test_report_of_an_empty_or_missing_timeline_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no timeline.jsonl"):
        load_run(tmp_path)
    (tmp_path / "timeline.jsonl").write_text("")
    page = render_html(load_run(tmp_path))  # an empty run still renders (a hub that died at once)
    assert "0 seconds recorded" in page


def test_hubs_workers_and_the_cli_start_without_matplotlib_rich_prometheus_or_jinja2() -> None:
    import sys

    code = ("import sys, connscale.control.hub, connscale.procs.worker, connscale.app.cli, connscale.app.run, "
            "connscale.control.agent; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'matplotlib', 'rich', 'prometheus_client', 'jinja2'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


# ---------------------------------------------------------------- what a run directory says is text on the page

def _hostile(name: str) -> str:
    """A value that breaks out of an attribute and opens a script wherever it lands unescaped."""
    return f'"><script>{name}'


def _hostile_runs(tmp_path: Path) -> tuple[list[Path], list[str]]:
    """Two run directories whose every string the report shows is hostile, and those strings' names.

    What reaches the page from outside connscale's own words: the run directory's name, the
    configuration (a path, the target URL), the host's manifest and an agent's, a peer's failure
    causes, the agents' names and hosts, incident and explanation words, the gates' expressions
    and baseline, the observed server's label, phase names and events on the timeline, and what
    could not be read."""
    h = _hostile
    records = make_records(fail_at_step=2)
    records[0]["phase"] = h("phase")
    records[0]["events"] = [h("event")]
    ag = {"agent": h("agent"), "host": h("ahost"), "share": 3000, "held": 3000, "peak_open": 3000,
          "failures": {h("afail"): 3}}
    summary = {
        "verdict": "failed", "reason": "", "target": 6000, "held": 0,
        "explanation": {"headline": h("headline"), "wall": h("wall"), "side": h("side"),
                        "evidence": [h("evidence")], "fix": [h("fix")]},
        "search": {"knee": 0, "capacity": h("capacity")},
        "incidents": [{"elapsed_s": 9.0, "trigger": h("trig"), "wall": h("iwall"), "side": h("iside"),
                       "headline": h("ihead"), "evidence": [h("iev")], "fix": [h("ifix")]}],
        "thresholds": [{"expression": h("expr"), "source": h("source"), "metric": "held", "op": ">=",
                        "limit": 1.0, "passed": False, "note": h("note")}],
        "baseline": {"run_dir": h("basedir"), "tolerance_pct": 5.0, "lacks": [h("lack")],
                     "checks": [{"metric": h("metric"), "better": "higher", "tolerance_pct": 5.0,
                                 "outcome": "skipped", "note": h("cnote")}],
                     "changed": [{"key": h("hkey"), "values": [h("was"), h("now")]}]},
        "split": [{"agent": h("agent"), "share": 3000, "limit": h("limit"), "why": h("why")}],
        "agents": [ag],
        "lost_agents": [{"agent": h("lagent"), "host": h("lhost"), "reason": h("lreason")}],
        "memory": {"baseline": {"elapsed_s": 1.0}, "server": {"label": h("label")},
                   "rows": [{"key": h("mkey"), "what": h("what"), "kind": h("kind"), "side": h("mside"),
                             "opened": 100.0}]},
        "manifests": {h("mname"): h("mfile")},
    }
    one = write_run(tmp_path / h("dir"), records, summary)
    manifest = json.loads((one / "manifest.json").read_text())
    manifest["host"]["hostname"] = h("hostname")
    manifest["versions"][h("vkey")] = [h("vlist")]
    manifest["sysctls"][h("sysctl")] = h("svalue")
    manifest["written"] = h("written")
    manifest["config"] = {"client": {"url": "http://x/" + h("url")}, "control": {"secret_file": "/etc/" + h("path")}}
    (one / "manifest.json").write_text(json.dumps(manifest))
    with open(one / "timeline.jsonl", "a") as f:
        f.write(json.dumps({"elapsed_s": h("torn")}) + "\n")
    # A hub's own record says its headline in its opening words, its reason and its failures' causes.
    hub = {"verdict": "recorded", "kind": "hub", "reason": h("reason"), "target": 6000, "held": 0,
           "explanation": {"headline": h("hubhead")}, "failures": {"connect:" + h("cause"): 40}}
    two = write_run(tmp_path / "hub", make_records(), hub)
    names = ["dir", "phase", "event", "agent", "ahost", "afail", "headline", "wall", "side", "evidence", "fix",
             "capacity", "trig", "iwall", "iside", "ihead", "iev", "ifix", "expr", "source", "note", "basedir",
             "lack", "metric", "cnote", "hkey", "was", "now", "limit", "why", "lagent", "lhost", "lreason", "label",
             "what", "kind", "mside", "mname", "mfile", "hostname", "vkey", "vlist", "sysctl", "svalue", "written",
             "url", "path", "torn", "reason", "hubhead", "cause"]
    return [one, two], names


def test_every_string_a_run_directory_says_is_escaped_on_the_page(tmp_path: Path, monkeypatch) -> None:
    from connscale.diagnose import pages

    runs, names = _hostile_runs(tmp_path)
    page = "".join(render_html(load_run(d)) for d in runs)
    assert "<script" not in page.lower()
    missing = [n for n in names if f"&lt;script&gt;{n}" not in page]
    assert not missing, f"not on the page: {missing}"
    # Each of them is a real way in: rendered without autoescape, every one is a script.
    monkeypatch.setattr(pages, "ENV", pages.ENV.overlay(autoescape=False))
    raw = "".join(render_html(load_run(d)) for d in runs)
    assert [n for n in names if f"<script>{n}" not in raw] == []
