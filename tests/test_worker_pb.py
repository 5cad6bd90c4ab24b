"""Real worker processes over their PB pipes, supervised, one of them killed.

The reactor runs in a child python (never inside pytest): it supervises one
server worker and one client worker, has the client hold 50 connections,
SIGKILLs the client worker by the pid the supervisor started, and checks that
the supervisor counts the loss and brings a new worker back to 50. The child
prints its findings as JSON; the assertions are made here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r'''
import json, os, signal, socket, sys, time

from twisted.internet import defer, task
from twisted.logger import globalLogBeginner, textFileLogObserver

from connscale.net.routes import Route
from connscale.procs.records import ClientSpec, ServerSpec, WorkerOrder
from connscale.procs.supervisor import Supervisor

globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr, timeFormat="")], redirectStandardIO=False)

DEADLINE = time.monotonic() + float(sys.argv[1])
out = {"steps": []}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@defer.inlineCallbacks
def until(reactor, what, check, *sups):
    while True:
        yield defer.gatherResults([s.poll() for s in sups])
        if check():
            out["steps"].append(what)
            return True
        if time.monotonic() > DEADLINE:
            out["timeout"] = what
            return False
        yield task.deferLater(reactor, 0.1, lambda: None)


@defer.inlineCallbacks
def main(reactor):
    port = free_port()
    servers = Supervisor(reactor, "server", ServerSpec(interface="127.0.0.1", ports=(port,), backlog=512),
                         "t", restart_delay=0.2)
    clients = Supervisor(reactor, "client", ClientSpec(interval=0.5, timeout=3.0, rate=2000.0),
                         "t", restart_delay=0.2, hung_after=3.0)
    try:
        out["server_budgets"] = yield servers.ensure(1)
        out["client_budgets"] = yield clients.ensure(1)
        slot = clients.slots[0]
        out["pid1"] = slot.pid
        out["pid1_alive"] = slot.alive
        yield clients.apply([WorkerOrder(50, (Route(None, "127.0.0.1", port, 1000),))])
        ok = yield until(reactor, "open50", lambda: clients.count() == 50 and servers.count() == 50
                         and clients.totals().pongs >= 50, clients, servers)
        out["before"] = {"client": clients.totals().to_dict(), "server": servers.totals().to_dict()}
        if not ok:
            return
        os.kill(slot.pid, signal.SIGKILL)
        ok = yield until(reactor, "lost", lambda: clients.lost_workers == 1, clients)
        lost = clients.totals()
        out["after_loss"] = {"client": lost.to_dict(), "lost_workers": clients.lost_workers,
                             "restarts": slot.restarts, "events": list(clients.events)}
        if not ok:
            return
        ok = yield until(reactor, "server_saw_loss", lambda: servers.count() == 0, servers)
        ok = yield until(reactor, "reopen50", lambda: slot.alive and slot.pid != out["pid1"]
                         and clients.count() == 50 and servers.count() == 50, clients, servers)
        out["pid2"] = slot.pid
        out["pid2_alive"] = slot.alive
        out["pid2_running"] = os.path.exists(f"/proc/{slot.pid}")
        out["final"] = {"client": clients.totals().to_dict(), "server": servers.totals().to_dict(),
                        "lost_workers": clients.lost_workers,
                        "workers": [w.to_wire() for w in clients.workers()],
                        "target": slot.target}
        if not ok:
            return
        # A hung worker (stopped, not dead) is killed by the supervisor and replaced.
        os.kill(slot.pid, signal.SIGSTOP)
        ok = yield until(reactor, "hung_replaced", lambda: clients.lost_workers == 2 and slot.alive
                         and slot.pid != out["pid2"] and clients.count() == 50, clients, servers)
        out["hung"] = {"events": list(clients.events), "pid3": slot.pid,
                       "pid2_gone": not os.path.exists(f"/proc/{out['pid2']}/status")
                       or "zombie" in open(f"/proc/{out['pid2']}/status").read()}
    finally:
        yield clients.stop(grace=2.0)
        yield servers.stop(grace=2.0)
        out["stopped"] = [s.alive for s in clients.slots + servers.slots]
        out["pids"] = [s.pid for s in clients.slots + servers.slots]
        print(json.dumps(out))


task.react(main)
'''


@pytest.fixture(scope="module")
def result() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, "40"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=70,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {proc.returncode})\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    data = json.loads(lines[-1])
    data["_stderr"] = proc.stderr[-4000:]
    data["_rc"] = proc.returncode
    return data


def test_workers_start_and_report_budgets(result: dict) -> None:
    assert result["server_budgets"][0] > 100 and result["client_budgets"][0] > 100
    assert result["pid1_alive"] is True and isinstance(result["pid1"], int)
    assert "timeout" not in result, result["_stderr"]


def test_client_holds_50_on_both_sides(result: dict) -> None:
    assert "open50" in result["steps"], result["_stderr"]
    before = result["before"]
    assert before["client"]["open"] == 50 and before["client"]["opened"] == 50
    assert before["server"]["open"] == 50
    assert before["client"]["failures"] == {}
    assert before["client"]["pongs"] >= 50


def test_supervisor_reports_the_lost_worker(result: dict) -> None:
    assert "lost" in result["steps"], result["_stderr"]
    loss = result["after_loss"]
    assert loss["lost_workers"] == 1
    assert loss["restarts"] == 1
    assert loss["client"]["failures"].get("steady:worker_lost") == 50
    assert loss["client"]["open"] == 0
    assert loss["client"]["closed"] == 50
    assert any(f"(pid {result['pid1']}) lost" in e and "50 connections lost" in e for e in loss["events"])


def test_new_worker_takes_over_and_reconnects(result: dict) -> None:
    assert "server_saw_loss" in result["steps"]
    assert "reopen50" in result["steps"], result["_stderr"]
    assert result["pid2"] != result["pid1"]
    assert result["pid2_alive"] is True and result["pid2_running"] is True
    final = result["final"]
    assert final["target"] == 50
    assert final["lost_workers"] == 1
    client = final["client"]
    # Totals never go backwards: the dead worker's numbers are kept.
    assert client["open"] == 50
    assert client["opened"] == 100
    assert client["failures"] == {"steady:worker_lost": 50}
    assert final["server"]["open"] == 50
    assert final["server"]["opened"] == 100
    assert final["workers"][0]["restarts"] == 1 and final["workers"][0]["alive"] is True


def test_everything_stops(result: dict) -> None:
    assert result["stopped"] == [False, False]
    assert result["_rc"] == 0
    for pid in result["pids"]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


def test_a_hung_worker_is_killed_and_replaced(result: dict) -> None:
    assert "hung_replaced" in result["steps"], result["_stderr"]
    hung = result["hung"]
    assert hung["pid3"] != result["pid2"] and hung["pid2_gone"]
    assert any("has not answered for" in e and "killing it" in e for e in hung["events"]), hung["events"]
