"""`connscale run` end to end, small: a held target, a failed one, a dead hub."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import connscale, free_port, free_ports

pytestmark = pytest.mark.slow


def write_config(tmp: Path, **extra: str) -> Path:
    ports = free_ports(2)
    control = free_port()
    values = {
        "ports": f"{ports[0]}-{ports[1]}",
        "control": str(control),
        "target": "3000",
        "per_route_max": "14000",
        "source_ips": "127.0.0.2-127.0.0.3",
    }
    values.update(extra)
    path = tmp / "run.yaml"
    path.write_text(
        f"""
server: {{ports: "{values['ports']}", status_interval: 1}}
client:
  server: "127.0.0.1:{values['ports']}"
  source_ips: "{values['source_ips']}"
  interval: 2
  per_route_max: {values['per_route_max']}
control: {{listen: "tcp:{values['control']}:interface=127.0.0.1", console: none}}
scenario: {{target: {values['target']}, rate: 3000, steps: 2, hold: 1, final_hold: 3, time_limit: 60}}
run: {{dir: runs}}  # relative: resolved against the directory connscale run starts in
"""
    )
    return path


def run(tmp: Path, config: Path) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"))
    r = subprocess.run(connscale("run", "-c", str(config)), capture_output=True, text=True, timeout=150, env=env,
                       cwd=tmp)
    summaries = list((tmp / "runs").glob("*/summary.json"))
    assert len(summaries) == 1, (r.stdout, r.stderr)
    return r, json.loads(summaries[0].read_text())


def test_run_holds_a_small_target(tmp_path):
    r, summary = run(tmp_path, write_config(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "HELD: held=3000 target=3000" in r.stdout
    assert summary["verdict"] == "held" and summary["held"] == 3000 and summary["target"] == 3000
    assert summary["peak_open"] == 3000 and summary["failures"] == {}
    assert summary["pongs"] > 0 and summary["pings"] >= summary["pongs"]
    assert set(summary["rtt_ms"]) == {"p50", "p90", "p99", "max"} and summary["rtt_ms"]["p50"] > 0
    assert summary["workers"]["server"] >= 2 and summary["workers"]["client"] >= 1
    assert summary["duration_s"] > 0
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "timeline.jsonl").stat().st_size > 0
    assert (run_dir / "hub.log").exists() and (run_dir / "agent.log").exists()
    assert json.loads((run_dir / "config.json").read_text())["scenario"]["target"] == 3000


def test_run_stops_when_routes_cannot_hold_the_step(tmp_path):
    # One source IP x two server ports x a quota of 500: at most 1000 of the first step's 1500.
    config = write_config(tmp_path, per_route_max="500", source_ips="127.0.0.2")
    r, summary = run(tmp_path, config)
    assert r.returncode == 1
    assert summary["verdict"] == "failed" and summary["held"] == 0
    assert "the client's routes hold at most 1000 connections" in summary["reason"]
    assert "reason: step 1: the client's routes hold at most 1000" in r.stdout


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


def test_interrupted_run_still_writes_its_summary_and_stops_its_children(tmp_path):
    import signal
    import time

    import psutil

    config = write_config(tmp_path, target="20000")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    proc = subprocess.Popen(connscale("run", "-c", str(config)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tmp_path / "runs").glob("*/timeline.jsonl")):
            time.sleep(0.2)
        time.sleep(3)  # the ramp is under way
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
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive, alive
