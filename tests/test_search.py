"""Search mode: the plateau strategy and the SLO judgement on invented timelines
(fast), and one real `connscale run` whose search finds a knee on purpose."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from connscale.config.loader import ConfigError, parse_config
from connscale.diagnose.records import Cause, SearchResult
from connscale.diagnose.search import Search, Slo, explain_search, judge
from connscale.diagnose.verdict import explain_search_verdict
from connscale.metrics.histograms import encode_histogram, new_histogram
from connscale.metrics.records import Incident, Stats
from tests.support.procs import connscale, free_port, free_ports


def levels(search: Search, passes_below: int) -> list[int]:
    """Run the strategy against a setup that sustains anything below `passes_below`."""
    tried = []
    while (level := search.next_level()) is not None:
        tried.append(level)
        search.report(level, level < passes_below)
        assert len(tried) < 50
    return tried


def test_search_grows_then_bisects_to_the_resolution():
    s = Search(start=5000, target=1_000_000, growth=2.0, resolution=0.05)
    tried = levels(s, passes_below=33_000)
    assert tried[:4] == [5000, 10_000, 20_000, 40_000]
    assert s.failed is not None and s.knee < 33_000 <= s.failed
    assert s.failed - s.knee <= max(100, 0.05 * s.knee)
    assert not s.reached_target


def test_search_stops_at_its_upper_bound_and_when_nothing_passes():
    s = Search(start=5000, target=12_000)
    assert levels(s, passes_below=10**9) == [5000, 10_000, 12_000] and s.reached_target and s.knee == 12_000
    s = Search(start=5000, target=100_000, min_gap=100)
    tried = levels(s, passes_below=0)
    assert s.knee == 0 and tried[0] == 5000 and all(t < 5000 for t in tried[1:])
    with pytest.raises(ValueError):
        Search(start=5, target=10, growth=1.0)


def second(t, open, pings, rtt_ms=None, failures=None, saturated=False, client_lag=1.0, server_lag=1.0,
           phase="plateau:1"):
    hist = new_histogram()
    for ms in rtt_ms or []:
        hist.record_value(int(ms * 1000))
    return Stats.from_wire({
        "elapsed_s": float(t), "phase": phase,
        "client": {"open": open, "pings": pings, "failures": failures or {}},
        "server": {"open": open, "failures": {}},
        "rtt_hist": encode_histogram(hist) if rtt_ms else "",
        "load": {"measuring_side_saturated": saturated,
                 "client": {"lag_ms_max": client_lag, "saturated": 1 if saturated else 0},
                 "server": {"lag_ms_max": server_lag, "saturated": 0, "silent": 0}},
    })


SLO = Slo(p99_ms=50.0, timeout_rate=0.001, failures=0)


def test_a_quiet_plateau_passes():
    recs = [second(t, 10_000, 1000 * t, rtt_ms=[1, 2, 3, 5]) for t in range(1, 6)]
    p = judge(1, 10_000, recs, SLO, before=second(0, 10_000, 0))
    assert p.passed and p.reasons == () and p.cause is None
    assert p.pings == 5000 and p.open_min == 10_000 and p.rtt_ms.p99 == pytest.approx(5.0, rel=0.02)


def test_a_slow_plateau_fails_on_p99_and_names_whose_loop_was_late():
    recs = [second(t, 20_000, 1000 * t, rtt_ms=[5, 80, 120], client_lag=110.0) for t in range(1, 6)]
    p = judge(2, 20_000, recs, SLO, before=second(0, 20_000, 0))
    assert not p.passed and "p99 RTT" in p.reasons[0]
    assert p.cause.wall == "measuring_side" and "largely connscale's own" in p.cause.headline
    recs = [second(t, 20_000, 1000 * t, rtt_ms=[5, 80, 120], server_lag=100.0) for t in range(1, 6)]
    assert judge(2, 20_000, recs, SLO).cause.wall == "server_starved"


def test_timeouts_and_failures_fail_a_plateau_with_the_incident_that_names_them():
    recs = [second(t, 9000, 1000 * t, rtt_ms=[1], failures={"steady:no_answer_from_server": 30 * t})
            for t in range(1, 6)]
    incident = Incident.from_wire({"elapsed_s": 3.0, "trigger": "failures", "wall": "server_starved",
                                   "side": "server", "headline": "stopped", "fix": ["kill -CONT"],
                                   "failures": {"steady:no_answer_from_server": 30}})
    p = judge(3, 9000, recs, SLO, before=second(0, 9000, 0), incidents=[incident])
    assert not p.passed and p.timeouts == 150 and p.failures == {"steady:no_answer_from_server": 150}
    assert any("timeouts 0.0300 of pings" in r for r in p.reasons)
    assert p.cause == Cause("server_starved", "server", "stopped", ("kill -CONT",))


def test_saturated_clients_fail_a_plateau_as_not_a_measurement():
    recs = [second(t, 9000, 1000 * t, rtt_ms=[1], saturated=True) for t in range(1, 6)]
    p = judge(4, 9000, recs, SLO)
    assert not p.passed and "not a measurement of the server" in p.reasons[-1]
    assert p.cause.wall == "measuring_side"


def test_full_routes_fail_a_plateau_as_routes():
    p = judge(5, 2000, [], SLO, reached=False, placed=1400)
    assert not p.passed and p.reasons == ("the routes hold at most 1,400 connections",)
    assert p.cause.wall == "routes"


def test_the_search_summary_names_the_knee_its_cause_and_the_curve():
    s = Search(start=1000, target=4000, resolution=0.05)
    plateaus = []
    for k, (level, ok) in enumerate([(1000, True), (2000, False)], 1):
        recs = [second(t, level, 100 * t, rtt_ms=[2]) for t in range(1, 4)]
        plateaus.append(judge(k, level, recs, SLO) if ok else judge(k, level, [], SLO, reached=False, placed=1400))
        s.report(level, ok)
    found = explain_search(s, plateaus, SLO)
    assert found.knee == 1000 and found.failed_at == 2000 and found.cause and found.cause.wall == "routes"
    assert found.headline.startswith("the largest sustainable count is 1,000 connections (p99 RTT")
    assert "at 2,000: the routes hold at most 1,400" in found.headline
    assert [p.level for p in found.curve] == [1000, 2000]
    # One way into summary.json and back.
    assert SearchResult.from_wire(json.loads(json.dumps(found.to_wire()))) == found
    e = explain_search_verdict(found)
    assert e.wall == "routes" and e.fix and len(e.evidence) == 2 and not e.measuring_side_saturated


def test_search_keys_are_validated():
    cfg = parse_config({"scenario": {"mode": "search", "search_start": 2000, "slo_p99_ms": 20}})
    assert cfg.scenario.mode == "search" and cfg.scenario.search_start == 2000
    with pytest.raises(ConfigError, match="scenario.mode: expected one of ramp|search"):
        parse_config({"scenario": {"mode": "bisect"}})
    with pytest.raises(ConfigError, match="scenario.search_growth: must be between 1.01 and 100"):
        parse_config({"scenario": {"search_growth": 1}})


@pytest.mark.slow
def test_a_search_run_finds_the_knee_its_routes_allow(tmp_path):
    # One source IP x two server ports x 700: the routes hold 1,400. The search
    # passes 1,000, fails 2,000 on the routes, and narrows down below 1,400.
    ports = free_ports(2)
    config = tmp_path / "search.yaml"
    config.write_text(f"""
server: {{ports: "{ports[0]}-{ports[1]}", status_interval: 1}}
client:
  server: "127.0.0.1:{ports[0]}-{ports[1]}"
  source_ips: "127.0.0.2"
  interval: 1
  per_route_max: 700
control: {{listen: "tcp:{free_port()}:interface=127.0.0.1", console: none}}
scenario: {{target: 4000, rate: 4000, mode: search, search_start: 1000, search_plateau: 2, search_resolution: 0.1,
           time_limit: 100}}
run: {{dir: runs}}
""")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    r = subprocess.run(connscale("run", "-c", str(config)), capture_output=True, text=True, timeout=150, env=env,
                       cwd=tmp_path)
    assert "search: this host is expected to reach about 1,400 (routes binds first" in r.stdout, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    search = summary["search"]
    assert summary["verdict"] == "knee" and summary["held"] == search["knee"]
    assert 1000 <= search["knee"] <= 1400 and search["cause"]["wall"] == "routes"
    curve = search["curve"]
    assert curve[0]["level"] == 1000 and curve[0]["passed"] and curve[0]["rtt_ms"]["p99"] is not None
    assert curve[1]["level"] == 2000 and not curve[1]["passed"]
    assert summary["explanation"]["wall"] == "routes" and "largest sustainable count" in summary["explanation"]["headline"]
    # The plateaus are phases of the timeline: the report can take their percentiles.
    phases_seen = {json.loads(line).get("phase") for line in
                   next((tmp_path / "runs").glob("*/timeline.jsonl")).read_text().splitlines()}
    assert "plateau:1" in phases_seen
    assert "why: the largest sustainable count is" in r.stdout
