"""The observer beside a real redis-server (issue 15's "Done when" for Redis).

1. redis-server starts with an open-file limit of 65,536 and `maxclients 10000` (so Redis keeps
   10,000: it lowers maxclients to its limit minus 32 only at start, when the limit is below
   maxclients + 32); then the test lowers its RLIMIT_NOFILE to 5,000 with prlimit. The wall
   expected is therefore the process's open-file limit, not maxclients: Redis's accept() fails
   with EMFILE once it holds 5,000 descriptors, never answering "max number of clients". A
   `connscale run` to 6,000 stops there and its explanation names that limit as the observer
   read it, with the pid and the fix. With the limit raised to 20,000 the same run holds 6,000.
2. The memory-per-connection table of a redis-server run agrees within 10 % with the test's
   own reading of /proc.

redis-server runs under a symlink of a unique name, so `observe: {name: ...}` cannot pick
another test's redis on a shared box. Every process is real and stopped by its pid; every
wait has a deadline.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support import servers
from tests.support.observing import (
    BASELINE_WINDOW,
    KernelSamples,
    Run,
    close,
    hold_readings,
    idle_readings,
    kernel_bytes,
    observed,
    sockets_of,
    unique_server,
)
from tests.support.procs import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(servers.missing("redis-server") is not None, reason=str(servers.missing("redis-server"))),
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) missing"),
]

#: Redis's own connection cap, kept well above the open-file limits the tests set.
MAXCLIENTS = 10_000
#: The open-file limit the wall is met at, and the one the same run holds under.
LOW, HIGH = 5_000, 20_000
TARGET = 6_000
#: Redis's RSS falls for some 6 s after the ramp (jemalloc hands back the pages of the ramp's
#: query and reply buffers, which Redis frees from idle clients); a hold this long ends settled.
FINAL_HOLD = 14
#: Hold seconds whose spread of the test's readings is the movement allowed between the two readers.
SETTLED = 3


def write_config(tmp: Path, port: int, name: str, target: int, final_hold: float = 3) -> Path:
    control = free_port()
    path = tmp / "run.yaml"
    path.write_text(f"""
client:
  url: "redis://127.0.0.1:{port}"
  interval: 2
  timeout: 5
  workers: 1
control: {{listen: "tcp:{control}:interface=127.0.0.1", console: none}}
observe: {{name: {name}}}
scenario: {{target: {target}, rate: 2000, steps: 2, hold: 1, final_hold: {final_hold}, time_limit: 90,
            max_failures: 0}}
run: {{dir: runs}}
""")
    return path


def set_nofile(pid: int, limit: int) -> None:
    subprocess.run(["prlimit", "--pid", str(pid), f"--nofile={limit}:{limit}"], check=True, timeout=20)
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert f"Max open files            {limit}" in limits, limits


def redis_maxclients(port: int) -> int:
    """What Redis itself says its maxclients is (CONFIG GET, in RESP by hand: redis-cli may be missing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$10\r\nmaxclients\r\n")
        reply = b""
        while reply.count(b"\r\n") < 5:
            reply += s.recv(256)
    return int(reply.split(b"\r\n")[4])


def run_at_limit(tmp: Path, limit: int) -> tuple[Run, int, dict[str, Any], str, int]:
    name, link = unique_server(tmp)
    # At its file limit Redis logs every accept() that fails with EMFILE, hundreds of MB a
    # minute while clients wait in its accept queue: its log goes nowhere.
    with servers.redis(tmp, maxclients=MAXCLIENTS, program=link, conf=("logfile /dev/null",)) as server:
        assert redis_maxclients(server.port) == MAXCLIENTS
        set_nofile(server.pid, limit)
        run = Run(tmp, write_config(tmp, server.port, name, TARGET))
        try:
            code, summary = run.finish()
        finally:
            run.stop()
        # Still Redis's own cap: the wall met below is the descriptors, not maxclients.
        assert redis_maxclients(server.port) == MAXCLIENTS
    return run, code, summary, name, server.pid


def test_redis_at_its_open_file_limit_is_named_with_its_pid_and_the_fix(tmp_path):
    run, code, summary, name, pid = run_at_limit(tmp_path, LOW)
    assert code == 1, run.text()[-3000:]
    explanation = summary["explanation"]
    assert (explanation["wall"], explanation["side"]) == ("fd_process", "server"), explanation
    assert f"the server process {name} (pid {pid}) reached its open-file limit (Max open files {LOW:,})" \
        in explanation["headline"], explanation
    assert any(f"read by the observer from /proc/{pid}/limits" in e for e in explanation["evidence"]), explanation
    fixes = " ".join(explanation["fix"])
    assert "LimitNOFILE=" in fixes and "ulimit -n" in fixes and f"prlimit --pid {pid}" in fixes, explanation
    # Not necessarily the last line: on a loaded box the run may also (rightly) report that its own
    # client workers were starved, and that caveat's evidence follows the wall's.
    assert "the wall is on the server side (read on the server's host by the observer)" \
        in explanation["evidence"], explanation
    # Redis holds a few descriptors of its own (the listener, epoll, its threads' pipes).
    assert LOW - 100 <= summary["peak_open"] <= LOW, summary["peak_open"]
    assert "why: stopped at" in run.text() and f"Max open files {LOW:,}" in run.text()
    print("stopped at", summary["peak_open"], "-", explanation["headline"], "| evidence:", explanation["evidence"],
          "| fix:", explanation["fix"])


def test_redis_with_its_open_file_limit_raised_holds(tmp_path):
    run, code, summary, name, pid = run_at_limit(tmp_path, HIGH)
    assert code == 0, run.text()[-3000:]
    assert summary["verdict"] == "held" and summary["held"] == TARGET and summary["failures"] == {}, summary
    assert summary["explanation"]["wall"] == "none"
    assert summary["memory"]["server"] == {"label": name, "pid": pid}, summary["memory"]
    print("held", summary["held"], "-", summary["explanation"]["headline"])


@pytest.mark.alone  # the kernel row is whole-host: no other test's sockets beside it
def test_the_memory_table_of_a_redis_run_agrees_with_proc(tmp_path):
    """The table's per-connection figures for a redis-server run: Redis's RSS, connscale's client
    workers' RSS, the kernel's socket slab and TCP buffers. The test reads each itself: Redis's
    and the client worker's RSS from /proc/PID/statm before the first connection (every 20 ms
    until it holds one) and in each second of the final hold, and the kernel's from
    /proc/slabinfo and /proc/net/sockstat when the observer's last line before any connection
    is out and again in the hold.

    User memory agrees within 10 %, widened by what RSS measurably moved between instants the
    two readers may have picked (the idle spread over BASELINE_WINDOW and the spread of the
    hold's last SETTLED readings, per connection), as the own-server memory test allows; the
    kernel's (whole-host counters other programs on a shared box move too) within 10 % or 600 B,
    widened the same way by what they moved (sampled every 100 ms) from BASELINE_WINDOW before
    the first connection to the test's baseline reading, and over the hold's settled seconds.
    Redis's RSS per connection is small (some 8 KB) and its idle RSS the larger part of its
    reading, so both are read as close to the observer's instants as the timeline allows."""
    name, link = unique_server(tmp_path)
    target = TARGET
    with servers.redis(tmp_path, program=link) as server, KernelSamples() as kernel_samples:
        listeners = sockets_of(server.pid)  # idle: its listening socket(s) only
        run = Run(tmp_path, write_config(tmp_path, server.port, name, target, final_hold=FINAL_HOLD))
        try:
            idle, idle_spread, _, client_pids = idle_readings(run, servers=0, clients=1,
                                                              targets={server.pid: listeners})
            connected = time.monotonic()
            base_line = run.wait_line("the observer's rows before any connection",
                                      lambda r: observed(r) is not None and r["client"]["open"] == 0)
            base_kernel = kernel_bytes()
            base_moved = kernel_samples.spread(connected - BASELINE_WINDOW, time.monotonic())
            seen = observed(base_line)
            assert (seen["label"], seen["pid"]) == (name, server.pid), seen
            readings = hold_readings(run, [server.pid], client_pids)
            hold = readings[sorted(readings)[-2]] if len(readings) >= 2 else {}
            # The seconds either reader may have picked: the test's, and the table's (the last).
            steady = [readings[t] for t in sorted(readings)[:-1]][-SETTLED:]
            code, summary = run.finish()
        finally:
            run.stop()
    assert code == 0, run.text()[-3000:]
    assert hold and hold["open"] == target, (readings, run.text()[-3000:])
    table = summary["memory"]
    rows = {r["key"]: r for r in table["rows"]}
    assert table["server"] == {"label": name, "pid": server.pid}, table
    assert table["pinging"]["phase"] == "final_hold" and table["pinging"]["open"] == target, table
    assert "connscale_server_rss" not in rows, rows  # no server of connscale's own in this run
    mine = {"server": (hold["server"] - idle[server.pid]) / hold["open"],
            "client": (hold["client"] - sum(idle[p] for p in client_pids)) / hold["open"]}
    noise = {side: (sum(idle_spread.get(p, 0) for p in pids)
                    + max(r[side] for r in steady) - min(r[side] for r in steady)) / hold["open"]
             for side, pids in (("server", [server.pid]), ("client", client_pids))}
    assert close(mine["server"], rows["server_rss"]["pinging"], noise=noise["server"]), (mine, noise, rows)
    assert close(mine["client"], rows["connscale_client_rss"]["pinging"], noise=noise["client"]), (mine, noise, rows)
    kernel = None
    if base_kernel is not None:
        kernel = (hold["kernel"] - base_kernel) / hold["open"]
        # What the whole-host counters moved by themselves around the two baselines and in the hold.
        moved = (base_moved + max(r["kernel"] for r in steady) - min(r["kernel"] for r in steady)) / hold["open"]
        assert close(kernel, rows["kernel"]["pinging"], slack=600, noise=moved), (kernel, moved, rows["kernel"])
    print("memory per connection (bytes):", json.dumps({r["key"]: (r.get("opened"), r.get("pinging"))
                                                         for r in table["rows"]}),
          "test's own:", mine, "kernel:", kernel, "idle:", idle, "noise:", noise, "hold readings:", readings)
