"""A fleet experiment is one command: `connscale run -c fleet.yaml` across agents on other hosts.

The hosts are network namespaces with their own sshd (as tests/test_e2e_multihost.py):
the run executes in h1 (hub and server there), its agents are launched over ssh into
h2 and h3 and hold their shares of the target on h1's ports. Every wait is bounded and
asserts on counts; every process is stopped by its pid, and the network's cleanup ends
whatever is left in its namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from connscale.diagnose.records import Summary
from connscale.metrics.histograms import new_histogram, rtt_summary_ms
from connscale.metrics.phases import FINAL_HOLD
from connscale.metrics.timeline import read_timeline
from tests.support.netns import Host, TestNetwork, netns_available
from tests.support.procs import Proc, connscale, free_ports
from tests.support.sshd import Sshd, sshd_unavailable_reason
from tests.support.multihost import (
    CONTROL_PORT,
    SERVER_PORTS,
    connscale_processes,
    random_secret,
    remote_env,
    ssh_options_without_port,
)

netns = pytest.mark.skipif(not netns_available(), reason="needs root and working `ip netns` (veth, bridge)")
sshd = pytest.mark.skipif(sshd_unavailable_reason() is not None, reason=str(sshd_unavailable_reason()))

RUN_TIMEOUT = 150.0


@contextlib.contextmanager
def fleet_hosts() -> Iterator[tuple[Host, Host, Host, Sshd, Sshd]]:
    """Three hosts: h1 for the run (its hub and server), h2 and h3 each with an sshd (s2, s3)
    the run launches its agent through."""
    with TestNetwork(3) as net:
        h1, h2, h3 = net.hosts
        with Sshd(netns=h2) as s2, Sshd(netns=h3) as s3:
            yield h1, h2, h3, s2, s3


def fleet_config(h1: Host, clients: dict[str, dict[str, Any]], **scenario: Any) -> dict[str, Any]:
    """The hub in h1 (server and controller on its address), the agents under clients:."""
    return {
        "server": {"interface": h1.ip, "ports": list(SERVER_PORTS)},
        "client": {"server": f"{h1.ip}:{SERVER_PORTS[0]}-{SERVER_PORTS[-1]}", "interval": 2, "per_route_max": 1500},
        "control": {"listen": f"tcp:{CONTROL_PORT}:interface={h1.ip}", "secret": random_secret(), "console": "none"},
        "clients": clients,
        "scenario": {"rate": 3000, "steps": 2, "hold": 1, "final_hold": 3, "time_limit": 100, **scenario},
        "run": {"dir": "runs"},
    }


def client_entry(host: Host, sshd_: Sshd, source_ips: list[str], **extra: Any) -> dict[str, Any]:
    return {"host": host.ip, "port": sshd_.port, "user": "root", "ssh_options": ssh_options_without_port(sshd_),
            "python": sys.executable, "source_ips": source_ips, "env": remote_env(), **extra}


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_dir_of(stdout: str) -> Path:
    line = next(line for line in stdout.splitlines() if line.startswith("summary: "))
    return Path(line.split(": ", 1)[1]).parent


def added_rtt(records: list, agents: list[str]) -> Any:
    """The final hold's RTT from each agent's own histograms, added."""
    hist = new_histogram()
    for r in records:
        if r.phase != FINAL_HOLD:
            continue
        for name in agents:
            mine = r.clients[name].histogram() if name in r.clients else None
            if mine is not None:
                hist.add(mine)
    return rtt_summary_ms(hist)


@netns
@sshd
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_fleet_run_launches_its_agents_splits_by_capacity_and_says_it_in_one_summary(tmp_path: Path) -> None:
    with fleet_hosts() as (h1, h2, h3, s2, s3):
        extra = h2.add_address("198.18.0.12")
        # h3 has one source address where h2 has two: it reaches half as much (1 x 2 ports x 1,500).
        cfg = write(tmp_path / "fleet.yaml", fleet_config(h1, {
            "h2": client_entry(h2, s2, [h2.ip, extra]), "h3": client_entry(h3, s3, [h3.ip])}, target=6000,
            thresholds=["held >= 6000", "failures == 0", "hold_p99_ms < 60000"]))

        # The same config, checked before the run: the fleet (over ssh), never this host in its place.
        check = h1.run(connscale("check", "-c", str(cfg)), capture_output=True, text=True, timeout=90, cwd=tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "(each host asked over ssh)" in check.stdout
        assert f"agents: h2 ({h2.ip}), h3 ({h3.ip})" in check.stdout
        assert "verdict: these hosts can reach 6,000 connections." in check.stdout
        assert "127.0.0" not in check.stdout

        began = time.monotonic()
        r = h1.run(connscale("run", "-c", str(cfg)), capture_output=True, text=True, timeout=RUN_TIMEOUT,
                   cwd=tmp_path)
        took = time.monotonic() - began
        assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
        out = r.stdout
        assert "agent h2: started over ssh" in out and "agent h3: started over ssh" in out
        assert f"h2 on {h2.ip}: 4,000 of 6,000 (reaches 6,000; routes binds first" in out, out
        assert f"h3 on {h3.ip}: 2,000 of 6,000 (reaches 3,000; routes binds first: 1 source IP x 2 server " \
               "ports x 1,500 per route" in out, out
        assert out.index("split of 6,000") < out.index("holding 6000 connections")
        run_dir = run_dir_of(out)

        summary = Summary.from_wire(json.loads((run_dir / "summary.json").read_text()))
        assert summary.verdict == "held" and summary.held == 6000
        assert [(s.agent, s.share, s.limit) for s in summary.split] == [("h2", 4000, "routes"), ("h3", 2000, "routes")]
        assert "1 source IP x 2 server ports" in summary.split[1].why  # why h3 got less
        rows = {a.agent: a for a in summary.agents}
        assert {name: (a.share, a.held, a.host) for name, a in rows.items()} == {
            "h2": (4000, 4000, h2.ip), "h3": (2000, 2000, h3.ip)}
        for a in rows.values():
            assert a.failures == {} and a.rtt_ms.p99 is not None and a.rate_achieved and a.cpu_cores is not None
        # The merged percentiles are exact: each agent's histograms added give the same figures.
        records = list(read_timeline(run_dir / "timeline.jsonl"))
        assert added_rtt(records, ["h2", "h3"]) == summary.rtt_final_hold_ms
        # The gate reads the fleet's merged figures (the agents' rows stand beside them).
        assert summary.metrics["held"] == 6000 and summary.metrics["failures"] == 0
        assert summary.metrics["hold_p99_ms"] == round(summary.rtt_final_hold_ms.p99, 3)
        assert [t.passed for t in summary.thresholds] == [True, True, True] and summary.gate_passed
        assert "gate: PASSED (0 of 3 thresholds failed)" in out
        # Both hosts' manifests, and the run's own host's.
        assert summary.manifests == {"hub": "manifest.json", "h2": "manifest-h2.json", "h3": "manifest-h3.json"}
        for file in summary.manifests.values():
            manifest = json.loads((run_dir / file).read_text())
            assert manifest["host"]["kernel"] and manifest["rlimits"]["nofile"] and manifest["versions"]["connscale"]
        report = (run_dir / "report.html").read_text()
        assert "<h2>Agents</h2>" in report and "Manifest of agent h2" in report and "Manifest of agent h3" in report

        # The run's agents are gone with it.
        for host in (h2, h3):
            assert not {p: c for p, c in connscale_processes(host).items() if " agent " in f"{c} "}
        print(f"fleet run: 6,000 held, split 4,000/2,000, {took:.1f} s")


@netns
@sshd
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_an_agent_killed_mid_hold_is_named_with_its_host_and_connections(tmp_path: Path) -> None:
    with fleet_hosts() as (h1, h2, h3, s2, s3), contextlib.ExitStack() as stack:
        # h3's agent runs under a file limit of 1,024 with one worker: it holds far less than
        # its routes allow, and the split gives it that much only.
        low = tmp_path / "python-low-nofile"
        low.write_text(f"#!/bin/sh\nulimit -n 1024\nexec {sys.executable} \"$@\"\n")
        low.chmod(0o755)
        cfg = write(tmp_path / "fleet.yaml", fleet_config(h1, {
            "h2": client_entry(h2, s2, [h2.ip]),
            "h3": client_entry(h3, s3, [h3.ip], python=str(low), workers=1)}, target=3000, final_hold=60))
        run = Proc([*h1.argv([]), *connscale("run", "-c", str(cfg))], tmp_path / "run.log", cwd=tmp_path)
        stack.callback(run.stop)
        run.wait_line("holding 3000 connections", timeout=RUN_TIMEOUT)
        agents = {p: c for p, c in connscale_processes(h3).items() if " agent " in f"{c} " and "--name h3" in c}
        assert len(agents) == 1, agents
        (pid,) = agents
        os.kill(pid, signal.SIGKILL)
        try:
            code = run.popen.wait(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError("the run went on after its agent was killed:\n" + run.text()[-4000:]) from None
        out = run.text()
        assert code == 1, out[-4000:]
        summary = Summary.from_wire(json.loads((run_dir_of(out) / "summary.json").read_text()))
        h3_share = next(s for s in summary.split if s.agent == "h3")
        assert h3_share.limit == "fd_process" and "RLIMIT_NOFILE hard 1,024" in h3_share.why, h3_share
        assert 0 < h3_share.share < 1500, summary.split  # less than an even split would have asked
        (lost,) = summary.lost_agents
        assert (lost.agent, lost.host, lost.connections) == ("h3", h3.ip, h3_share.share)
        assert summary.verdict == "failed" and summary.explanation is not None
        assert summary.explanation.wall == "agent_lost"
        assert f"agent h3 on {h3.ip} was lost with {h3_share.share:,} connections" in summary.explanation.headline
        assert "why: stopped at" in out and f"agent h3 on {h3.ip} was lost with {h3_share.share:,} connections" in out
        assert summary.failures.get("steady:agent_lost") == h3_share.share
        assert next(a for a in summary.agents if a.agent == "h3").lost


def test_agents_that_cannot_be_reached_are_said_one_line_each_before_any_connect(tmp_path: Path) -> None:
    server, control, dead1, dead2 = free_ports(4)
    cfg = write(tmp_path / "fleet.yaml", {
        "server": {"ports": [server]},
        "client": {"server": f"127.0.0.1:{server}"},
        "control": {"listen": f"tcp:{control}:interface=127.0.0.1", "console": "none"},
        "clients": {"east": {"host": "127.0.0.1", "port": dead1, "user": "nobody"},
                    "west": {"host": "127.0.0.1", "port": dead2, "user": "nobody"}},
        "scenario": {"target": 100, "steps": 1, "hold": 0, "final_hold": 1, "time_limit": 60},
        "run": {"dir": str(tmp_path / "runs")},
    })
    r = subprocess.run(connscale("run", "-c", str(cfg)), capture_output=True, text=True, timeout=90,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    east = [line for line in lines if line.startswith("connscale run: agent east: cannot start:")]
    west = [line for line in lines if line.startswith("connscale run: agent west: cannot start:")]
    assert len(east) == 1 and len(west) == 1, r.stdout
    assert f"nobody@127.0.0.1:{dead1}" in east[0] and "Connection refused" in east[0]
    summary = Summary.from_wire(json.loads((run_dir_of(r.stdout) / "summary.json").read_text()))
    assert summary.reason == "2 of 2 agents could not be started (east, west); nothing was connected"
    assert summary.peak_open == 0 and not summary.steps


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctl_watch_shows_the_timelines_second_and_a_hub_on_its_own_leaves_its_record(tmp_path: Path) -> None:
    from tests.support.hub import Hub

    hub = Hub(tmp_path)
    with contextlib.ExitStack() as stack:
        proc = hub.start()
        stack.callback(proc.stop)
        agent = hub.agent("a1")
        stack.callback(agent.stop)
        agent.wait_line("registered with controller", 30)
        assert hub.ctl("start", "400").returncode == 0
        hub.wait_count(400)
        # Watch while pinging, then at idle (nothing pings: no RTT, not the hub's old one).
        watching = hub.ctl("watch", "--count", "4", "--interval", "1", timeout=60)
        assert watching.returncode == 0, watching.stderr
        assert hub.ctl("connections_stop", "400").returncode == 0  # the verb's name, as the console spells it
        hub.wait_count(0)
        time.sleep(3)  # a few seconds with nothing to ping (the scenario, not a wait on a race)
        idle = hub.ctl("watch", "--count", "1", timeout=60)
        assert idle.returncode == 0, idle.stderr
        # A wrong secret says where ours came from (here: the environment), in its one line.
        wrong = subprocess.run(connscale("ctl", "--config", str(hub.config), "clients"), capture_output=True,
                               text=True, timeout=60,
                               env=dict(os.environ, **hub.env, CONNSCALE_SECRET="Zq8-wrong-but-long-enough-secret-73"))
        assert wrong.returncode == 4 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
        assert "wrong control secret" in wrong.stderr
        assert wrong.stderr.strip().endswith("(our secret came from the environment (CONNSCALE_SECRET))"), wrong.stderr
    # Stopped on its own: the hub wrote its record, and the report says what it is.
    record = tmp_path / "rec"
    lines = {r.elapsed_s: r for r in read_timeline(record / "timeline.jsonl")}

    def fields(line: str) -> dict[str, str]:
        return dict(kv.split("=", 1) for kv in line.split() if "=" in kv)

    shown = [fields(line) for line in watching.stdout.splitlines() if line.startswith("t=")]
    assert len(shown) == 4, watching.stdout
    compared = 0
    for f in shown:
        if f["rtt_second"] == "-":
            continue
        second = lines[float(f["rtt_second"])]
        assert second.rtt_window_ms is not None
        assert (f["rtt_p50_ms"], f["rtt_p99_ms"]) == (f"{second.rtt_window_ms.p50:.2f}",
                                                      f"{second.rtt_window_ms.p99:.2f}"), (f, second.rtt_window_ms)
        assert "rtt_since_start_p99_ms" in f
        compared += 1
    assert compared >= 3, shown
    (at_idle,) = [fields(line) for line in idle.stdout.splitlines() if line.startswith("t=")]
    assert at_idle["rtt_p50_ms"] == "-" and at_idle["rtt_since_start_p99_ms"] != "-", at_idle

    summary = Summary.from_wire(json.loads((record / "summary.json").read_text()))
    assert summary.kind == "hub" and summary.verdict == "recorded" and summary.peak_open == 400
    assert [(a.agent, a.share, a.peak_open) for a in summary.agents] == [("a1", 400, 400)]
    assert json.loads((record / "manifest.json").read_text())["host"]["kernel"]
    r = subprocess.run(connscale("report", str(record)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = (record / "report.html").read_text()
    assert "<h1>connscale hub record rec</h1>" in page and "HUB RECORD" in page, page[:2000]
    assert "<strong>a hub's own record</strong>" in page and "connscale run" not in page.split("<main>")[1][:200]
