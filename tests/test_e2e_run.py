"""`connscale run` end to end, small: a held target, a failed one, a dead hub."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.mounts import can_mount, remount_read_only, tmpfs
from tests.support.procs import connscale
from tests.support.runconfig import run, write_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fast_path", ["1", "0"], ids=["fast", "stock"])
def test_run_holds_a_small_target(tmp_path, fast_path):
    # On the fast path and on Twisted's own transports (net.fastpath's switch).
    r, summary = run(tmp_path, write_config(tmp_path), env={"CONNSCALE_FAST_PATH": fast_path})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "HELD: held=3000 target=3000" in r.stdout
    assert summary["verdict"] == "held" and summary["held"] == 3000 and summary["target"] == 3000
    assert summary["peak_open"] == 3000 and summary["failures"] == {}
    assert summary["pongs"] > 0 and summary["pings"] >= summary["pongs"]
    assert set(summary["rtt_ms"]) == {"p50", "p90", "p99", "max"} and summary["rtt_ms"]["p50"] > 0
    assert summary["workers"]["server"] >= 2 and summary["workers"]["client"] >= 1
    assert summary["duration_s"] > 0
    # The client workers of the final target were started (real processes, over PB) before the ramp.
    assert summary["client_workers_start_s"] is not None
    assert any(e.startswith(f"{summary['workers']['client']} client worker") and "running for 3000 connections" in e
               and e.endswith("before the ramp)") for e in summary["events"]), summary["events"]
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "timeline.jsonl").stat().st_size > 0
    assert (run_dir / "hub.log").exists() and (run_dir / "agent.log").exists()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["scenario"]["target"] == 3000
    # The config recorded is the one the run ran with: the environment's word applied.
    assert config["net"]["fast_path"] is (fast_path == "1")
    # connscale's own cost: every timeline line says what the hub, the agent, the observer of its
    # server and the workers take, and the summary adds the run's own process over the final hold.
    lines = [json.loads(line) for line in (run_dir / "timeline.jsonl").read_text().splitlines() if line.strip()]
    kinds = set().union(*(line["cost"]["by_kind"] for line in lines[2:]))
    assert {"hub", "server_workers", "agents", "client_workers", "observers"} <= kinds, lines[-1]["cost"]
    cost = summary["cost_final_hold"]
    assert cost["by_kind"]["run"]["processes"] == 1 and cost["cores"] > 0 and cost["rss_bytes"] > 50e6
    assert cost["by_kind"]["observers"]["processes"] == 1 and cost["by_kind"]["observers"]["rss_bytes"] > 10e6
    assert cost["processes"] == 4 + summary["workers"]["server"] + summary["workers"]["client"]
    assert "cost: connscale itself: " in r.stdout
    path = "fast path" if fast_path == "1" else "Twisted's transports"
    assert f"server workers listening ({path};" in (run_dir / "hub.log").read_text()
    # Latency of the final hold apart from the ramps, in the summary and the verdict line.
    final = summary["rtt_final_hold_ms"]
    assert final["p50"] > 0 and final["p99"] >= final["p50"]
    assert summary["rtt_by_phase"]["final_hold"]["seconds"] >= 2
    assert f"rtt_ms final_hold p50={final['p50']} p99={final['p99']} whole_run p99=" in r.stdout
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["sysctls"]["net.ipv4.ip_local_port_range"] and manifest["config"]["scenario"]["target"] == 3000
    assert f"report: {run_dir / 'report.html'}" in r.stdout and (run_dir / "report.html").stat().st_size > 10_000
    # It explains itself: held, with the final hold's RTT, and what the preflight saw.
    explanation = summary["explanation"]
    assert explanation["wall"] == "none" and explanation["headline"].startswith("held 3,000 of 3,000 connections")
    assert "RTT p50" in explanation["headline"]
    # On a busy shared box the clients may well saturate; then the headline must say so.
    assert explanation["measuring_side_saturated"] == ("not the server's limit" in explanation["headline"]
                                                       or "clients keeping up" in explanation["headline"])
    assert summary["preflight"]["ok"] and summary["preflight"]["reachable"] == 3000
    assert all(i["wall"] == "measuring_side" for i in summary["incidents"])  # nothing else on a healthy run
    assert "why: held 3,000 of 3,000" in r.stdout


def test_run_refuses_a_target_its_routes_cannot_reach(tmp_path):
    # One source IP x two server ports x a quota of 500: at most 1000 of 3000.
    config = write_config(tmp_path, per_route_max="500", source_ips="127.0.0.2")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    r = subprocess.run(connscale("run", "-c", str(config)), capture_output=True, text=True, timeout=60, env=env,
                       cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr   # could not start: 1 is a run (or a gate) that failed
    assert "connscale run: refused: routes (client) allow 1,000 of 3,000 connections" in r.stdout
    assert "client.source_ips: 127.0.0.2-127.0.0.4" in r.stdout and "--force" in r.stdout
    # Refused before anything started: no run directory, no process.
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_run_stops_when_routes_cannot_hold_the_step(tmp_path):
    # Forced past the preflight: the step itself finds the routes short.
    config = write_config(tmp_path, per_route_max="500", source_ips="127.0.0.2")
    r, summary = run(tmp_path, config, "--force")
    assert r.returncode == 1
    assert "connscale run: --force: running although routes (client) allow 1,000" in r.stdout
    assert summary["verdict"] == "failed" and summary["held"] == 0
    assert "the client's routes hold at most 1000 connections" in summary["reason"]
    assert "reason: step 1: the client's routes hold at most 1000" in r.stdout
    assert summary["preflight"]["binding"] == "routes" and summary["preflight"]["reachable"] == 1000
    assert summary["explanation"]["wall"] == "routes"


def test_run_with_a_port_in_use_fails_with_the_hubs_reason(tmp_path):
    config = write_config(tmp_path)
    port = int(config.read_text().split('ports: "')[1].split("-")[0])
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        r, summary = run(tmp_path, config)
    assert r.returncode == 1
    assert summary["verdict"] == "failed"
    assert "cannot listen on 127.0.0.1" in summary["reason"] and "EADDRINUSE" in summary["reason"]
    # The original's first finding, named: EADDRINUSE on listen, with the fix.
    explanation = summary["explanation"]
    assert explanation["wall"] == "listen_in_use" and "ss -ltnp" in explanation["fix"][0]
    assert "why: stopped at 0 of 3,000 connections: the server could not listen" in r.stdout


def test_run_stops_on_failures_and_says_why(tmp_path):
    # A raw-framing server and a line-framing client: every first ping is a violation.
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace("status_interval: 1}", "status_interval: 1, framing: raw}"))
    r, summary = run(tmp_path, config)
    assert r.returncode == 1
    assert summary["verdict"] == "failed" and summary["held"] == 0
    assert "failures exceeded scenario.max_failures=0" in summary["reason"]
    assert summary["failures"].get("server:first_ping:protocol_error", 0) > 0
    assert "reason: failures exceeded" in r.stdout
    # A failed run gets its report too, saying why in words.
    page = (Path(summary["run_dir"]) / "report.html").read_text()
    assert "FAILED" in page and "failures exceeded scenario.max_failures=0" in page
    assert summary["explanation"]["wall"] == "protocol"
    assert any(i["wall"] == "protocol" for i in summary["incidents"])


def timeline_records(tmp: Path) -> list:
    from connscale.metrics.timeline import read_timeline

    paths = list((tmp / "runs").glob("*/timeline.jsonl"))
    return list(read_timeline(paths[0])) if paths else []


def wait_ramp_started(tmp: Path, timeout: float = 60.0) -> None:
    """Until the hub's timeline shows client connections open (polled, not slept)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(r.client.open > 0 for r in timeline_records(tmp)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no client connection in the timeline after {timeout}s")


def test_interrupted_run_still_writes_its_summary_and_stops_its_children(tmp_path):
    import signal

    import psutil

    config = write_config(tmp_path, target="20000", max_failures="1000000")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = subprocess.Popen(connscale("run", "-c", str(config)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp_path)
    try:
        wait_ramp_started(tmp_path)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 1, out
    assert "reason: interrupted" in out
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["verdict"] == "failed" and summary["reason"] == "interrupted"
    assert (Path(summary["run_dir"]) / "report.html").exists() and "report: " in out
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, alive


def start_run(tmp: Path, config: Path) -> subprocess.Popen:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"))
    return subprocess.Popen(connscale("run", "-c", str(config)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return out


def assert_all_gone(procs, timeout: float = 30) -> None:
    import psutil

    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]


def test_a_configured_secret_is_used_and_never_written(tmp_path):
    config = write_config(tmp_path, target="1000")
    config.write_text(config.read_text().replace("console: none}", 'console: none, secret: "configured-secret-1"}'))
    r, summary = run(tmp_path, config)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = Path(summary["run_dir"])
    for path in run_dir.iterdir():
        assert b"configured-secret-1" not in path.read_bytes(), path
    assert (run_dir / "config.yaml").stat().st_mode & 0o777 == 0o600  # configuration: the owner's alone


def test_a_killed_hub_is_named_and_the_run_leaves_nothing_behind(tmp_path):
    import signal
    import time

    import psutil

    proc = start_run(tmp_path, write_config(tmp_path, target="20000", max_failures="1000000"))
    try:
        wait_ramp_started(tmp_path)
        family = psutil.Process(proc.pid).children(recursive=True)
        hub = next(p for p in psutil.Process(proc.pid).children() if "server" in p.cmdline())
        killed_at = time.time()
        os.kill(hub.pid, signal.SIGKILL)  # a pid our run started
    finally:
        out = finish(proc)
    assert proc.returncode == 1, out
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert f"the hub (pid {hub.pid}) was killed by signal 9 (SIGKILL) during the run" in summary["reason"]
    assert "timeline.jsonl holds every second up to then" in summary["reason"]
    assert f"reason: the hub (pid {hub.pid}) was killed" in out
    # Every line written is whole, and the last one is from just before the kill.
    lines = next((tmp_path / "runs").glob("*/timeline.jsonl")).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records and killed_at - 3 <= records[-1]["t"] <= killed_at + 1
    assert_all_gone(family)


def test_a_killed_run_leaves_no_orphans(tmp_path):
    import psutil

    proc = start_run(tmp_path, write_config(tmp_path, target="20000", max_failures="1000000"))
    try:
        wait_ramp_started(tmp_path)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 4  # hub, agent and their workers
        proc.kill()  # SIGKILL: the run cannot clean up; the lifelines must
    finally:
        finish(proc)
    assert_all_gone(family)


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs root to mount a tmpfs")


@needs_mount
def test_a_read_only_run_directory_is_one_line(tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        remount_read_only(disk)
        config = write_config(tmp_path)
        config.write_text(config.read_text().replace("run: {dir: runs}", f"run: {{dir: {disk}/runs}}"))
        r = subprocess.run(connscale("run", "-c", str(config)), capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env=dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg")))
    assert r.returncode == 2
    assert r.stderr.strip() == f"connscale run: cannot create a run directory under {disk}/runs: Read-only file system"


def fill(path: Path) -> None:
    """Write zeros to `path` until its file system is full."""
    try:
        with open(path, "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError:
        pass


@needs_mount
def test_a_full_disk_still_gets_its_summary_out(tmp_path):
    import time

    import psutil

    with tmpfs(tmp_path / "disk", "256k") as disk:
        config = write_config(tmp_path, target="3000")
        config.write_text(config.read_text().replace("run: {dir: runs}", f"run: {{dir: {disk}/runs}}"))
        proc = start_run(tmp_path, config)
        try:
            deadline = time.monotonic() + 60
            while not list(disk.glob("runs/*/timeline.jsonl")):
                assert time.monotonic() < deadline, "no timeline after 60 s"
                time.sleep(0.1)
            family = psutil.Process(proc.pid).children(recursive=True)
            fill(disk / "filler")
        finally:
            out = finish(proc)
        assert_all_gone(family)
        hub_log = next(disk.glob("runs/*/hub.log")).read_text(errors="replace")
    assert proc.returncode in (0, 1), out
    lines = out.splitlines()
    note = next(i for i, line in enumerate(lines) if "summary.json: No space left on device; the summary follows" in line)
    summary = json.loads(lines[note + 1])
    assert summary["target"] == 3000 and summary["verdict"] in ("held", "failed")
    assert "Traceback" not in out and "Traceback" not in hub_log


def test_a_hub_stopped_for_40_s_neither_ends_the_run_nor_kills_healthy_workers(tmp_path):
    import signal
    import time

    import psutil

    config = write_config(tmp_path, target="3000", timeout="10")
    config.write_text(config.read_text().replace("final_hold: 3, time_limit: 60", "final_hold: 8, time_limit: 150"))
    proc = start_run(tmp_path, config)
    try:
        deadline = time.monotonic() + 60
        while not any(r.phase == "final_hold" for r in timeline_records(tmp_path)):
            assert time.monotonic() < deadline, "the final hold did not begin"
            assert proc.poll() is None, finish(proc)
            time.sleep(0.2)
        hub = next(p for p in psutil.Process(proc.pid).children() if "server" in p.cmdline())
        os.kill(hub.pid, signal.SIGSTOP)  # a pid our run started
        try:
            time.sleep(40)  # the fault itself: the hub frozen for 40 s
        finally:
            os.kill(hub.pid, signal.SIGCONT)
    finally:
        out = finish(proc, timeout=150)
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert proc.returncode == 0, out
    assert summary["verdict"] == "held" and summary["held"] == 3000
    assert any("the hub did not answer for" in e for e in summary["events"]), summary["events"]
    hub_log = next((tmp_path / "runs").glob("*/hub.log")).read_text()
    assert "supervisor was stalled for" in hub_log and "the controller was stalled for" in hub_log
    # No worker killed as hung, none lost, no agent given up for silent.
    assert "killing it" not in hub_log and "lost: no answer" not in hub_log
    assert not re.search(r"worker-\d+ \(pid \d+\) lost", hub_log), hub_log
