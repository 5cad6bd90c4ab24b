"""The observer for real: `connscale run` watching its own server workers (the memory table
against the test's own reading of /proc), a real server process killed and restarted
mid-hold, a server worker whose open-file limit the test lowers with prlimit, and an
observer started over ssh in a network-namespace host reporting a server in that namespace.

Every process is real and stopped by its pid; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import TestNetwork, netns_available
from tests.support.observing import Run, close, hold_readings, idle_readings, kernel_bytes, observed, unique_server
from tests.support.procs import Proc, connscale, free_port, free_ports
from tests.support.sshd import Sshd, sshd_unavailable_reason

pytestmark = pytest.mark.slow


def write_config(tmp: Path, target: int = 6000, steps: int = 2, hold: float = 2, final_hold: float = 6,
                 extra: str = "", server: str = "", max_failures: int = 0) -> Path:
    ports = free_ports(2)
    control = free_port()
    path = tmp / "run.yaml"
    path.write_text(f"""
server: {{ports: "{ports[0]}-{ports[1]}", status_interval: 1, workers: 2{server}}}
client:
  server: "127.0.0.1:{ports[0]}-{ports[1]}"
  source_ips: "127.0.0.2-127.0.0.3"
  interval: 2
  timeout: 5
  workers: 1
control: {{listen: "tcp:{control}:interface=127.0.0.1", console: none}}
scenario: {{target: {target}, rate: 3000, steps: {steps}, hold: {hold}, final_hold: {final_hold}, time_limit: 90,
            max_failures: {max_failures}}}
run: {{dir: runs}}
{extra}
""")
    return path


@pytest.mark.alone  # the kernel row is whole-host: no other test's sockets beside it
def test_a_run_observes_its_own_server_and_its_memory_table_agrees_with_proc(tmp_path):
    """Every run watches its own server workers. The table's user memory per connection (the
    server workers', the client workers') agrees within 10 % with what this test reads from
    /proc/PID/statm itself before each worker's first connection and during the final hold; the
    kernel's (slab and TCP buffers: whole-host counters that other programs on a shared box move
    too) within 10 % or 600 B.

    The test and the observer read /proc at different instants (the observer's baseline up to
    two seconds before the first connection, its hold reading in another second of the hold),
    so the 10 % is widened by what RSS measurably moved between such instants: each worker's
    spread of idle readings over BASELINE_WINDOW, and the spread of the test's own readings
    across the hold's seconds, per connection. A table off by more than that still fails."""
    run = Run(tmp_path, write_config(tmp_path, target=8000))
    try:
        idle, idle_spread, server_pids, client_pids = idle_readings(run, servers=2, clients=1)
        base_line = run.wait_line("the observer's rows before any connection",
                                  lambda r: observed(r) is not None and r["client"]["open"] == 0)
        base_kernel = kernel_bytes()
        target = observed(base_line)
        assert target["label"] == "connscale server workers" and target["alive"]
        assert sorted(p["pid"] for p in target["processes"]) == sorted(server_pids)
        assert all(p["nofile_soft"] and p["fds"] for p in target["processes"])
        readings = hold_readings(run, server_pids, client_pids)
        hold = readings[sorted(readings)[-2]] if len(readings) >= 2 else {}
        steady = [readings[t] for t in sorted(readings)[:-1]]  # the last may overlap the stop
        code, summary = run.finish()
    finally:
        run.stop()
    assert code == 0, run.text()[-3000:]
    assert hold and hold["open"] == 8000, run.text()[-3000:]
    table = summary["memory"]
    rows = {r["key"]: r for r in table["rows"]}
    assert table["server"]["label"] == "connscale server workers"
    assert table["pinging"]["phase"] == "final_hold" and table["pinging"]["open"] == 8000
    mine = {"server": (hold["server"] - sum(idle[p] for p in server_pids)) / hold["open"],
            "client": (hold["client"] - sum(idle[p] for p in client_pids)) / hold["open"]}
    # Per connection, what RSS moved between instants the two readers may have picked.
    noise = {side: (sum(idle_spread.get(p, 0) for p in pids)
                    + max(r[side] for r in steady) - min(r[side] for r in steady)) / hold["open"]
             for side, pids in (("server", server_pids), ("client", client_pids))}
    assert close(mine["server"], rows["connscale_server_rss"]["pinging"], noise=noise["server"]), (mine, noise, rows)
    assert close(mine["server"], rows["server_rss"]["pinging"], noise=noise["server"]), (mine, noise, rows)
    assert close(mine["client"], rows["connscale_client_rss"]["pinging"], noise=noise["client"]), (mine, noise, rows)
    if base_kernel is not None:
        kernel = (hold["kernel"] - base_kernel) / hold["open"]
        assert close(kernel, rows["kernel"]["pinging"], slack=600), (kernel, rows["kernel"])
    report = (Path(summary["run_dir"]) / "report.html").read_text()
    assert "Memory per held connection" in report and 'data-k="memory.server_rss.pinging"' in report
    print("memory per connection (bytes):", json.dumps({r["key"]: (r.get("opened"), r.get("pinging"))
                                                         for r in table["rows"]}), "test's own:", mine,
          "idle:", idle, "noise:", noise, "hold readings:", readings)


def start_redis(link: Path, port: int, tmp: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(link), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)],
                            stdout=open(tmp / f"redis-{port}.log", "ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    return proc


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing (apt-get install redis-server)")
def test_the_observed_server_killed_mid_hold_is_an_event_and_the_verdict_names_it(tmp_path):
    name, link = unique_server(tmp_path)
    port = free_port()
    first = start_redis(link, port, tmp_path)
    second = None
    run = None
    try:
        run = Run(tmp_path, write_config(tmp_path, target=2000, final_hold=10), "--observe", name)
        line = run.wait_line("the observed redis with its listener",
                             lambda r: (observed(r) or {}).get("listeners") and r.get("phase") == "final_hold")
        target = observed(line)
        assert target["pid"] == first.pid and target["label"] == name
        assert target["listeners"][0]["port"] == port and target["listeners"][0]["backlog"] is not None
        first.kill()
        first.wait()
        second = start_redis(link, port, tmp_path)
        code, summary = run.finish()
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        if run is not None:
            run.stop()
    events = summary["target_events"]
    kinds = [e["kind"] for e in events]
    assert kinds in (["restarted"], ["exited", "found"]), events
    assert events[0]["pid"] == first.pid and events[-1]["new_pid"] == second.pid
    headline = summary["explanation"]["headline"]
    assert f"{name} (pid {first.pid}) exited at " in headline, headline
    if kinds == ["restarted"]:
        assert f"restarted as pid {second.pid}" in headline
    assert any(i["wall"] == "server_down" and i["trigger"] == "observer" for i in summary["incidents"])
    assert f"{name} (pid {first.pid}) exited" in run.text()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) missing")
def test_a_server_worker_at_its_file_limit_is_named_with_its_pid_and_the_fix(tmp_path):
    """connscale's own server, one worker, whose RLIMIT_NOFILE the test lowers to 2,000 with
    prlimit before the ramp: the run stops near 2,000 and its explanation names that process's
    open-file limit as the observer read it, with its pid and the fix."""
    run = Run(tmp_path, write_config_one_worker(tmp_path))
    try:
        line = run.wait_line("the server worker", lambda r: bool(r.get("server_workers")) and observed(r))
        pid = line["server_workers"][0]["pid"]
        subprocess.run(["prlimit", "--pid", str(pid), "--nofile=2000:2000"], check=True)
        code, summary = run.finish()
    finally:
        run.stop()
    assert code == 1, run.text()[-3000:]
    explanation = summary["explanation"]
    assert (explanation["wall"], explanation["side"]) == ("fd_process", "server"), explanation
    assert f"(pid {pid}) reached its open-file limit (Max open files 2,000)" in explanation["headline"]
    assert any(f"/proc/{pid}/limits" in e for e in explanation["evidence"]), explanation
    assert any("LimitNOFILE=" in f for f in explanation["fix"]) and any("ulimit -n" in f for f in explanation["fix"])
    # Not necessarily the last line: a starved client worker on a loaded box adds its caveat after it.
    assert "the wall is on the server side (read on the server's host by the observer)" \
        in explanation["evidence"], explanation
    assert 1500 <= summary["server_open_at_end"] <= 2000 and summary["peak_open"] <= 2000 + 200, summary
    assert "why: stopped at" in run.text() and "Max open files 2,000" in run.text()


def write_config_one_worker(tmp: Path) -> Path:
    ports = free_ports(1)
    control = free_port()
    path = tmp / "one.yaml"
    path.write_text(f"""
server: {{ports: {ports[0]}, status_interval: 1, workers: 1, backlog: 64}}
client:
  server: "127.0.0.1:{ports[0]}"
  source_ips: "127.0.0.2"
  interval: 2
  timeout: 5
  workers: 1
control: {{listen: "tcp:{control}:interface=127.0.0.1", console: none}}
scenario: {{target: 5000, rate: 1500, steps: 5, hold: 2, final_hold: 3, time_limit: 90}}
run: {{dir: runs}}
""")
    return path


SERVER = """
import socket, time
s = socket.socket(); s.bind(("0.0.0.0", 9000)); s.listen(32)
print("listening", flush=True)
time.sleep(300)
"""


@pytest.mark.skipif(not netns_available(), reason="needs root and working `ip netns`")
@pytest.mark.skipif(sshd_unavailable_reason() is not None, reason=str(sshd_unavailable_reason()))
def test_an_observer_launched_over_ssh_reports_a_server_in_its_namespace(tmp_path):
    from tests.support.multihost import (
        CONTROL_PORT,
        ctl_ok,
        hub_config,
        random_secret,
        remote_env,
        ssh_options_without_port,
        start_hub,
        wait_until,
    )
    from tests.support.multihost import write_config as write_hub_config

    with TestNetwork(2) as net, contextlib.ExitStack() as stack:
        h1, h2 = net.hosts
        sshd = stack.enter_context(Sshd(netns=h2))
        server = h2.popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "listening"
        client = h2.popen([sys.executable, "-c", "import socket, time\n"
                           "c = [socket.create_connection(('127.0.0.1', 9000)) for _ in range(3)]\n"
                           "time.sleep(300)"])
        cfg = write_hub_config(tmp_path / "connscale.yaml", hub_config(h1, random_secret(), clients={
            "srv": {"host": h2.ip, "port": sshd.port, "user": "root", "ssh_options": ssh_options_without_port(sshd),
                    "python": sys.executable, "env": remote_env(), "observe": server.pid,
                    "master": f"{h1.ip}:{CONTROL_PORT}"}}))
        hub = start_hub(stack, h1, cfg, tmp_path)
        assert ctl_ok(h1, cfg, "client-start", "srv", logs=(hub,)).strip() == "started srv"
        # Not a client: it holds no connections and takes no name among the agents.
        assert ctl_ok(h1, cfg, "clients", logs=(hub,)).strip() == "(none)"

        def row() -> Any:
            stats = json.loads(ctl_ok(h1, cfg, "stats", "--json", logs=(hub,)))
            target = ((stats.get("observers") or {}).get("srv") or {}).get("targets") or [{}]
            listeners = target[0].get("listeners") or []
            return (target[0].get("pid"), [(lst["port"], lst["queue"], lst["backlog"]) for lst in listeners])

        # pid as its namespace host sees it (the same pid namespace); the listener and the
        # three connections it never accepted are its network namespace's, read by the observer there.
        wait_until("the observer's row of the server in h2", row, (server.pid, [(9000, 3, 32)]), logs=(hub,))
        assert ctl_ok(h1, cfg, "client-stop", "srv", logs=(hub,)).strip() == "stopped"
        client.kill()
        server.kill()


def test_an_observer_that_may_not_read_its_target_says_so_once_and_goes_on(tmp_path):
    """Another user's process, watched by an observer without the capabilities to read it (root
    with an empty bounding set, as an unprivileged user would be): its fds and smaps are not
    ours, one line each at start, then the status lines go on with what can be read."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv")
    # setpriv execs: the pid is sleep's, running as nobody.
    victim = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sleep", "120"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{victim.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = Proc(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                     *connscale("observe", "--pid", str(victim.pid), "--status-interval", "1")],
                    tmp_path / "observe.log", env={"HOME": str(tmp_path)})
        try:
            proc.wait_for(lambda: proc.text().count("connscale-observe: target=") >= 3, 30, "status lines")
        finally:
            proc.stop()
    finally:
        victim.kill()
        victim.wait()
    lines = [line for line in proc.lines() if "cannot read" in line]
    assert any(f"pid {victim.pid} (sleep): cannot read its fds: Permission denied; going on without it" in line
               for line in lines), proc.text()[-2000:]
    assert len(lines) == len({line.split("cannot read its ")[1].split(":")[0] for line in lines}), lines  # once each
    assert "Traceback" not in proc.text()
    status = [line for line in proc.lines() if "connscale-observe: target=" in line][-1]
    assert "alive=True" in status and "fds=-" in status and "rss_mib=" in status


@pytest.mark.skipif(not netns_available(), reason="needs root and working `ip netns`")
def test_a_run_observing_a_process_in_another_namespace_says_so_and_holds(tmp_path):
    with TestNetwork(1) as net:
        (h1,) = net.hosts
        other = h1.popen(["sleep", "120"])
        run = Run(tmp_path, write_config(tmp_path, target=1000, final_hold=2), "--observe", str(other.pid))
        code, summary = run.finish()
    assert code == 0, run.text()[-3000:]
    said = [line for line in run.text().splitlines() if "another network namespace" in line]
    assert len(said) == 1 and said[0].startswith("observer server: pid ") and \
        said[0].endswith("; the run goes on without it"), said
    assert summary["verdict"] == "held"
