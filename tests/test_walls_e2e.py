"""Every wall provoked for real, and named by the hub's incident detector.

Real hub and agent processes, real sockets (on loopback, or inside a network
namespace whose sysctls and kernel counters are its own), real limits:
a client worker's RLIMIT_NOFILE lowered with prlimit (EMFILE), the ephemeral
port range narrowed in a namespace (EADDRNOTAVAIL), a tiny backlog in front of
a stopped server worker (accept-queue overflow, half-open ghosts), a server
worker stopped with SIGSTOP (timeouts), a client worker throttled by a cgroup
CPU quota (connscale's own side saturated). Each test waits (with a deadline)
for the incident to appear in `connscale ctl stats --json` and checks that it
names the wall, with evidence and a fix; and that the timeline holds it once.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connscale.metrics.records import Stats
from tests.support.netns import TestNetwork, netns_available
from tests.support.cpu import cgroup_v1_cpu, starved
from tests.support.procs import Proc, connscale, free_port

pytestmark = pytest.mark.slow

class Rig:
    """A hub (one server worker) and one agent `a1` (one client worker), on the
    shared loopback or both inside the namespace `host`."""

    def __init__(self, tmp: Path, host: Any = None, *, backlog: int = 512, interval: float = 1.0,
                 timeout: float = 1.0, rate: float = 2000.0, source_ips: str = "127.0.0.2-127.0.0.3") -> None:
        self.tmp = tmp
        self.host = host
        # Inside a namespace every port is free; on the shared loopback, pick free ones.
        self.port = 8989 if host else free_port()
        self.control = 8790 if host else free_port()
        self.env = {"XDG_CONFIG_HOME": str(tmp / "xdg"), "HOME": str(tmp)}
        self.config = tmp / "connscale.yaml"
        self.config.write_text(f"""
server: {{ports: {self.port}, status_interval: 1, workers: 1, backlog: {backlog}}}
client:
  server: 127.0.0.1:{self.port}
  source_ips: {source_ips}
  interval: {interval}
  timeout: {timeout}
  rate: {rate}
  workers: 1
  status_interval: 1
control: {{listen: "tcp:{self.control}:interface=127.0.0.1", console: none}}
""")
        self.record = tmp / "rec"
        self.procs: list[Proc] = []

    def prefix(self) -> list[str]:
        return self.host.argv([]) if self.host else []

    def start(self) -> "Rig":
        hub = Proc(connscale("server", "--config", str(self.config), "--record-dir", str(self.record)),
                   self.tmp / "hub.log", env=self.env, prefix=self.prefix())
        self.procs.append(hub)
        hub.wait_line("server workers listening", 30)
        agent = Proc(connscale("agent", "--config", str(self.config), "--master", f"127.0.0.1:{self.control}",
                               "--name", "a1"), self.tmp / "agent.log", env=self.env, prefix=self.prefix())
        self.procs.append(agent)
        agent.wait_line("registered with controller", 30)
        return self

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()

    def logs(self) -> str:
        return "".join(f"\n--- {p.log_path.name}\n" + p.text()[-2500:] for p in self.procs)

    def ctl(self, *args: str) -> str:
        env = dict(os.environ, **self.env)
        r = subprocess.run([*self.prefix(), *connscale("ctl", "--config", str(self.config), *args)],
                           capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"ctl {args}: {r.returncode} {r.stderr}" + self.logs()
        return r.stdout

    def stats(self) -> dict[str, Any]:
        return json.loads(self.ctl("stats", "--json"))

    def wait(self, what: str, probe, timeout: float = 40.0) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = probe(self.stats())
            if last:
                return last
            for p in self.procs:
                if not p.running():
                    raise AssertionError(f"{what}: {p.log_path.name} exited" + self.logs())
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}; last {last!r}" + self.logs())

    def open(self, n: int) -> dict[str, Any]:
        self.ctl("start", str(n), "--client", "a1")
        return self.wait(f"{n} open on both sides",
                         lambda s: s if s["client"]["open"] >= n and s["server"]["open"] >= n else None)

    def incident(self, wall: str, timeout: float = 40.0) -> dict[str, Any]:
        return self.wait(f"an incident naming {wall}",
                         lambda s: next((i for i in s["incidents"] if i["wall"] == wall), None), timeout)

    def timeline_incidents(self) -> list[dict[str, Any]]:
        out = []
        with open(self.record / "timeline.jsonl") as f:
            for line in f:
                out += json.loads(line).get("incidents", [])
        return out


@contextlib.contextmanager
def rig(tmp: Path, host: Any = None, **kw: Any) -> Iterator[Rig]:
    r = Rig(tmp, host, **kw)
    try:
        yield r.start()
    finally:
        r.stop()


def client_worker_pid(stats: dict[str, Any]) -> int:
    return int(stats["clients"]["a1"]["workers"][0]["pid"])


def server_worker_pid(stats: dict[str, Any]) -> int:
    return int(stats["server_workers"][0]["pid"])


def check_incident(incident: dict[str, Any], wall: str, side: str) -> None:
    assert (incident["wall"], incident["side"]) == (wall, side), incident
    assert incident["headline"] and incident["evidence"] and incident["fix"], incident
    assert {"open", "connect_rate", "failures", "kernel", "workers", "elapsed_s"} <= set(incident)
    assert any(w["cpu"] is not None and w["lag_ms_mean"] is not None for w in incident["workers"])


@pytest.mark.skipif(not shutil.which("prlimit"), reason="prlimit (util-linux) missing")
def test_emfile_in_a_client_worker_whose_file_limit_was_lowered(tmp_path):
    with rig(tmp_path) as r:
        stats = r.open(100)
        pid = client_worker_pid(stats)
        # The worker holds 100 sockets plus its own few; 160 leaves room for ~40 more.
        subprocess.run(["prlimit", "--pid", str(pid), "--nofile=160:160"], check=True)
        r.ctl("start", "200", "--client", "a1")
        incident = r.incident("fd_process")
        check_incident(incident, "fd_process", "client")
        assert incident["failures"].get("connect:EMFILE", 0) > 0
        evidence = " ".join(incident["evidence"])
        assert f"(pid {pid})" in evidence and "RLIMIT_NOFILE 160" in evidence and "lowered" in evidence
        assert "prlimit --pid" in incident["fix"][0]
        assert [i["wall"] for i in r.timeline_incidents()].count("fd_process") == 1


@pytest.mark.skipif(not netns_available(), reason="needs root + ip netns")
def test_ephemeral_ports_run_out_after_the_range_is_narrowed_in_a_namespace(tmp_path):
    with TestNetwork(1) as net:
        (host,) = net.hosts
        with rig(tmp_path, host, source_ips="127.0.0.2") as r:
            # The agent registered with the namespace's wide range; now only 200 ports are left.
            host.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40199"], check=True)
            r.ctl("start", "400", "--client", "a1")
            incident = r.incident("ephemeral_ports")
            check_incident(incident, "ephemeral_ports", "client")
            assert incident["failures"].get("connect:EADDRNOTAVAIL", 0) > 0
            assert 150 <= incident["open"] <= 200, incident["open"]
            evidence = " ".join(incident["evidence"])
            assert "1 routes (1 source IP x 1 server ports)" in evidence
            assert "the range was narrowed after the agent started" in evidence
            assert any("ip_local_port_range" in fix for fix in incident["fix"])


@pytest.mark.skipif(not netns_available(), reason="needs root + ip netns")
def test_a_tiny_backlog_before_a_stopped_server_overflows_into_ghosts(tmp_path):
    # In a namespace, so ListenOverflows counts only this test's listener.
    with TestNetwork(1) as net:
        (host,) = net.hosts
        with rig(tmp_path, host, backlog=8, rate=20000, timeout=5.0, source_ips="127.0.0.2") as r:
            pid = server_worker_pid(r.stats())
            os.kill(pid, signal.SIGSTOP)
            try:
                r.ctl("start", "200", "--client", "a1")
                incident = r.incident("accept_queue")
            finally:
                os.kill(pid, signal.SIGCONT)
            check_incident(incident, "accept_queue", "server")
            # backlog + 1 handshakes complete into the queue: the clients hold them,
            # the stopped server never accepted them; every later SYN is dropped.
            assert incident["ghosts_max"] >= 9, incident
            assert incident["kernel_delta"].get("listen_overflows", 0) > 0, incident["kernel_delta"]
            evidence = " ".join(incident["evidence"])
            assert "ghosts" in evidence and "ListenOverflows +" in evidence and "server.backlog 8" in evidence
            assert any("server.backlog" in fix and "somaxconn" in fix for fix in incident["fix"])


def test_a_stopped_server_worker_gives_timeouts_named_as_such(tmp_path):
    with rig(tmp_path) as r:
        r.open(300)
        r.wait("pongs", lambda s: s["client"]["pongs"] >= 300)
        pid = server_worker_pid(r.stats())
        os.kill(pid, signal.SIGSTOP)
        try:
            incident = r.incident("server_starved")
        finally:
            os.kill(pid, signal.SIGCONT)
        check_incident(incident, "server_starved", "server")
        assert "stopped" in incident["headline"]
        assert any(k.endswith("no_answer_from_server") for k in incident["failures"]), incident["failures"]
        assert f"(pid {pid}), has not answered" in " ".join(incident["evidence"])
        # Named from the server's silence, not from a busy client (which a busy shared box may add).
        assert "stopped" in incident["headline"] and incident["trigger"] in ("failures", "ramp_behind")


@pytest.mark.skipif(not cgroup_v1_cpu(), reason="needs root and the cgroup v1 cpu controller")
def test_a_throttled_client_worker_is_the_measuring_side_not_the_server(tmp_path):
    with rig(tmp_path, interval=0.5, timeout=2.0) as r:
        stats = r.open(2000)
        pid = client_worker_pid(stats)
        with starved(pid):
            incident = r.incident("measuring_side", timeout=45)
        check_incident(incident, "measuring_side", "client")
        assert "not the server's limit" in incident["headline"]
        worker = next(w for w in incident["workers"] if w["pid"] == pid)
        # Late as the hub judges it: its loop-lag probe (a late mean, or one long stall: a quota
        # with a long period lets it run in bursts), or too late to answer its agent at all.
        assert worker["lag_ms_mean"] >= 50 or worker["lag_ms_max"] >= 500 or worker["silent_s"] >= 2, worker
        assert any("agent hosts" in fix for fix in incident["fix"])
        # Late while hardly running: named as starved of CPU, and the quota is the first fix.
        assert "starved of CPU" in " ".join(incident["evidence"]) and "cgroup CPU quota" in incident["fix"][0]
        load = r.stats()["load"]
        assert set(load) >= {"client", "server", "measuring_side_saturated"}


def run_timeline(tmp: Path) -> list[Stats]:
    from connscale.metrics.timeline import read_timeline

    paths = list((tmp / "runs").glob("*/timeline.jsonl"))
    return list(read_timeline(paths[0])) if paths else []


def client_worker_of(run_pid: int) -> int | None:
    """The pid of the client worker under `connscale run` (run -> agent -> worker)."""
    import psutil

    try:
        for proc in psutil.Process(run_pid).children(recursive=True):
            cmd = proc.cmdline()
            if "connscale.procs.worker" in cmd and "client" in cmd:
                return proc.pid
    except psutil.Error:
        return None
    return None


@pytest.mark.skipif(not cgroup_v1_cpu(), reason="needs root and the cgroup v1 cpu controller")
def test_a_run_whose_client_is_throttled_says_it_is_not_the_servers_limit(tmp_path):
    ports = (free_port(), )
    config = tmp_path / "run.yaml"
    config.write_text(f"""
server: {{ports: {ports[0]}, status_interval: 1}}
client: {{server: "127.0.0.1:{ports[0]}", source_ips: 127.0.0.2, interval: 0.5, timeout: 2, workers: 1}}
control: {{listen: "tcp:{free_port()}:interface=127.0.0.1", console: none}}
scenario: {{target: 2000, rate: 4000, steps: 1, hold: 0, final_hold: 20, time_limit: 60}}
run: {{dir: runs}}
""")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    log = tmp_path / "run.out"
    with open(log, "w") as sink:
        proc = subprocess.Popen(connscale("run", "-c", str(config)), stdout=sink, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=tmp_path)
    try:
        # Starved of a share of what it uses while it holds the target: the ramp is done.
        deadline = time.monotonic() + 40
        while not any(r.client.open >= 2000 for r in run_timeline(tmp_path)):
            assert time.monotonic() < deadline and proc.poll() is None, "the run did not reach 2000 open"
            time.sleep(0.2)
        pid = client_worker_of(proc.pid)
        assert pid is not None, "no client worker"
        with starved(pid):
            proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    out = log.read_text()
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    explanation = summary["explanation"]
    assert explanation["measuring_side_saturated"] is True, (explanation, out)
    assert "not the server's limit" in explanation["headline"]
    assert any(i["wall"] == "measuring_side" for i in summary["incidents"])
    assert any("agent hosts" in fix for fix in explanation["fix"])
    assert "incident: measuring_side" in out and "why:" in out


@pytest.mark.skipif(not netns_available(), reason="needs root + ip netns")
def test_the_hubs_check_covers_an_agent_on_another_host(tmp_path):
    from tests.support.multihost import ctl, hub_config, random_secret, start_agent, start_hub, write_config

    # The agent's host has 500 ephemeral ports; the hub's check must see that from its registration.
    with TestNetwork(2) as net, contextlib.ExitStack() as stack:
        h1, h2 = net.hosts
        h2.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40499"], check=True)
        cfg = write_config(tmp_path / "connscale.yaml", hub_config(h1, random_secret()))
        start_hub(stack, h1, cfg, tmp_path)
        start_agent(stack, h2, h1, "far", cfg, tmp_path, [h2.ip]).wait_line("registered with controller", 60)
        r = ctl(h1, cfg, "check", "--target", "5000")
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "target 5,000 connections over 2 host(s)" in out
    far = next(line for line in out.splitlines() if line.strip().startswith("far"))
    # 1 source IP x 2 server ports x 500 ports, read on the agent's own host.
    assert "reaches        1,000" in far and "ephemeral_ports" in far and "40000-40499" in far
    assert "verdict: the client sides together reach 1,000 of 5,000: ephemeral_ports on far binds first" in out
    assert "more agents" in out


@pytest.mark.skipif(not cgroup_v1_cpu(), reason="needs root and the cgroup v1 cpu controller")
def test_a_cpu_starved_server_worker_gives_timeouts_named_as_such(tmp_path):
    with rig(tmp_path, interval=0.5, timeout=1.0) as r:
        r.open(2000)
        r.wait("pongs", lambda s: s["client"]["pongs"] >= 2000)
        pid = server_worker_pid(r.stats())
        with starved(pid):
            incident = r.incident("server_starved", timeout=45)
        check_incident(incident, "server_starved", "server")
        assert any(k.endswith("no_answer_from_server") for k in incident["failures"]), incident["failures"]
        evidence = " ".join(incident["evidence"])
        # Named on the server's own evidence: that worker's loop lag. (Whether the clients
        # also saturate depends on how busy the shared box is, so that is not asserted.)
        assert f"(pid {pid})" in evidence and "server workers saturated" in evidence, evidence
        assert "starved of CPU" in incident["headline"]
