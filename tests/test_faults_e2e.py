"""Workers failing under a real `connscale run` (issue 7, item 6).

A real run (hub, agent, their workers, real sockets on loopback); the test
finds a server worker's pid in the hub's timeline, checks that the pid is one
this run started, and signals it: SIGKILL, or SIGSTOP for 3 s then SIGCONT.
Every wait polls `timeline.jsonl` with a deadline; the 3 s stop is the fault's
own duration. Phases are long enough that a fault aimed at one phase (a hold)
stays inside it on a busy box, and each test checks afterwards that it did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import psutil
import pytest

from connscale.metrics.phases import STOP
from connscale.metrics.records import Stats
from connscale.metrics.timeline import read_timeline
from connscale.metrics.workers import WorkerRow
from tests.support.procs import connscale, free_port, free_ports

pytestmark = pytest.mark.slow

#: The fault of the SIGSTOP tests: how long a server worker stays stopped.
STOP_S = 3.0


class Run:
    """One `connscale run` in `tmp`, with 2 server workers on 2 ports."""

    def __init__(self, tmp: Path, *, target: int, steps: int, hold: float, final_hold: float, interval: float,
                 timeout: float, max_failures: int) -> None:
        self.tmp = tmp
        ports = free_ports(2)
        config = tmp / "run.yaml"
        config.write_text(f"""
server: {{ports: "{ports[0]}-{ports[1]}", status_interval: 1, workers: 2}}
client:
  server: "127.0.0.1:{ports[0]}-{ports[1]}"
  source_ips: "127.0.0.2-127.0.0.3"
  interval: {interval}
  timeout: {timeout}
control: {{listen: "tcp:{free_port()}:interface=127.0.0.1", console: none}}
scenario: {{target: {target}, rate: 2000, steps: {steps}, hold: {hold}, final_hold: {final_hold},
            time_limit: 150, max_failures: {max_failures}}}
run: {{dir: runs}}
""")
        env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"))
        self.proc = subprocess.Popen(connscale("run", "-c", str(config)), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp)
        self.out = ""

    def records(self) -> list[Stats]:
        paths = list((self.tmp / "runs").glob("*/timeline.jsonl"))
        return list(read_timeline(paths[0])) if paths else []

    def wait(self, what: str, probe: Callable[[list[Stats]], Any], timeout: float = 90.0) -> Any:
        """Poll the timeline until `probe(records)` is truthy; fail if the run ends first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = probe(self.records())
            if found:
                return found
            assert self.proc.poll() is None, f"the run ended before {what}:\n{self.finish()}"
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")

    def worker_in(self, phase: str, side: str) -> WorkerRow:
        """A `side` worker (of the run's agent, for "client") holding connections, as the
        timeline shows it during `phase`."""
        def probe(records: list[Stats]) -> WorkerRow | None:
            if not records or records[-1].phase != phase:
                return None
            alive = [w.row for w in records[-1].worker_rows() if w.side == side and w.row.alive and w.row.open > 0]
            return max(alive, key=lambda w: w.open) if alive else None

        worker = self.wait(f"a {side} worker with connections in phase {phase}", probe)
        ours = {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}
        assert worker.pid in ours, f"pid {worker.pid} is not a process of this run"
        return worker

    def family(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def finish(self, timeout: float = 150) -> str:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
            self.out += out or ""
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        return self.out

    def summary(self) -> dict[str, Any]:
        return json.loads(next((self.tmp / "runs").glob("*/summary.json")).read_text())

    def hub_log(self) -> str:
        return next((self.tmp / "runs").glob("*/hub.log")).read_text(errors="replace")

    def phase_start(self, phase: str) -> float:
        return next(p["start"] for p in self.summary()["phases"] if p["phase"] == phase)

    def fault(self, side: str, phase: str, before: str, fault: Callable[[int], None],
              after: Callable[[WorkerRow, float], None] = lambda victim, ended: None) -> Faulted:
        """In `phase`, `fault(pid)` on a `side` worker holding connections (then `after(victim,
        when the fault ended)`, still inside the run); the run is left to finish. Asserts the
        fault ended before phase `before` began, and the run exited 0."""
        try:
            victim = self.worker_in(phase, side)
            family = self.family()
            fault(victim.pid)
            ended = time.time()
            after(victim, ended)
        finally:
            out = self.finish()
        assert ended < self.phase_start(before), f"the fault was meant for {phase}; the run was faster"
        assert self.proc.returncode == 0, out
        return Faulted(victim, family, out, self.summary())


@attrs.frozen
class Faulted:
    """A run a fault struck: the worker it struck, the run's processes then, what the run printed
    and its summary.json."""

    victim: WorkerRow
    family: list[psutil.Process]
    out: str
    summary: dict[str, Any]


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)  # a worker of our run (worker_in checked)


def stop_for_a_while(pid: int) -> None:
    """SIGSTOP `pid` (a worker of our run) for STOP_S, the fault itself; SIGCONT whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(STOP_S)
    finally:
        os.kill(pid, signal.SIGCONT)


def assert_all_gone(family: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]


def killed_in_hold_1(tmp_path: Path, side: str) -> tuple[Run, Faulted, dict[str, Any]]:
    """A run of 2,000 in two steps, a `side` worker holding connections SIGKILLed in hold:1.

    A hold before the final one: the closes the loss causes are client failures, and
    client failures always count (towards max_failures, and a single one in the
    final hold means nothing was held: see README "held"). So max_failures
    tolerates the loss (at most the whole target), the kill lands in hold:1 and
    the final hold, after the refill, is clean: the run is HELD. The one worker loss
    in summary.json (returned) says which worker, how, and that it held connections."""
    run = Run(tmp_path, target=2000, steps=2, hold=10, final_hold=4, interval=2, timeout=5, max_failures=2000)
    faulted = run.fault(side, "hold:1", before="final_hold", fault=kill)
    summary = faulted.summary
    assert summary["verdict"] == "held" and summary["held"] == 2000, faulted.out
    (loss,) = summary["worker_losses"]
    assert (loss["pid"], loss["side"]) == (faulted.victim.pid, side)
    assert loss["how"] == "was killed by signal 9 (SIGKILL)" and loss["connections"] > 0
    return run, faulted, loss


def test_a_server_worker_killed_during_a_hold_is_replaced_refilled_and_named(tmp_path):
    run, faulted, loss = killed_in_hold_1(tmp_path, "server")
    victim, out, summary = faulted.victim, faulted.out, faulted.summary
    # The hub's supervisor said what the worker held; the server's tally agrees.
    lost = loss["connections"]
    assert summary["failures"]["server:steady:worker_lost"] == lost
    # The clients saw each of those connections closed, and classified it.
    client = {k: n for k, n in summary["failures"].items() if not k.startswith("server:")}
    assert set(client) <= {"steady:closed_by_peer", "steady:ECONNRESET", "first_ping:closed_by_peer",
                           "first_ping:ECONNRESET"}, client
    assert sum(client.values()) == lost, (client, lost)

    # The pool refilled: every lost connection was opened again (the final hold held all 2000).
    before_stop = [r for r in run.records() if r.phase != "stop"]
    assert before_stop[-1].client.opened >= 2000 + lost
    # The supervisor replaced the worker: two alive again, one of them new.
    last = before_stop[-1].server_workers
    assert sum(w.alive for w in last) == 2 and victim.pid not in {w.pid for w in last}
    assert any(loss_line.pid == victim.pid for r in run.records() for loss_line in r.worker_losses)

    # In plain words, in summary.json and under the verdict line.
    words = (f"a server worker (pid {victim.pid}) was killed by signal 9 (SIGKILL) at "
             f"{loss['elapsed_s']:.0f} s; {lost:,} connections were lost with it and replaced")
    assert words in summary["explanation"]["headline"]
    assert "why: held 2,000 of 2,000" in out and words in out
    assert_all_gone(faulted.family)


def test_a_client_worker_killed_during_a_hold_is_named_with_its_agent(tmp_path):
    # The measuring side's loss must reach the summary too: which agent, which worker, how,
    # how many connections; the agent's supervisor restarts it and the final hold is whole.
    _, faulted, loss = killed_in_hold_1(tmp_path, "client")
    victim, out, summary = faulted.victim, faulted.out, faulted.summary
    assert loss["agent"] == "local"
    assert summary["failures"].get("steady:worker_lost") == loss["connections"], summary["failures"]
    words = f"a client worker (pid {victim.pid}) on agent local was killed by signal 9 (SIGKILL)"
    assert words in summary["explanation"]["headline"] and words in out


def test_a_server_worker_stopped_3_s_with_a_longer_timeout_loses_nothing(tmp_path):
    # client.timeout 10 s >> the 3 s stop; max_failures 0: one failure would end the run.
    run = Run(tmp_path, target=1000, steps=1, hold=1, final_hold=15, interval=1, timeout=10, max_failures=0)

    def answers_again(victim: WorkerRow, resumed_at: float) -> None:
        # It answers its supervisor again (polled, not assumed), still in the final hold.
        run.wait("the stopped worker to answer again", lambda rs: any(
            (r.t or 0) > resumed_at and any(w.pid == victim.pid and w.alive and (w.silent_s or 0) < 1.5
                                            for w in r.server_workers) for r in rs))

    faulted = run.fault("server", "final_hold", before=STOP, fault=stop_for_a_while, after=answers_again)
    victim, out, summary = faulted.victim, faulted.out, faulted.summary
    assert summary["verdict"] == "held" and summary["held"] == 1000 and summary["failures"] == {}, out
    records = run.records()
    # The stop was real and seen: the hub saw the worker silent, its pings came back late, not lost.
    assert any(w.pid == victim.pid and (w.silent_s or 0) >= 2.0
               for r in records for w in r.server_workers), "the hub never saw the worker silent"
    assert summary["rtt_final_hold_ms"]["max"] >= 2000
    # Not killed as hung, not replaced: the same two workers from start to end.
    assert summary["worker_losses"] == [] and "killing it" not in run.hub_log()
    last = [r for r in records if r.phase == "final_hold"][-1].server_workers
    assert all(w.alive and w.restarts == 0 for w in last) and victim.pid in {w.pid for w in last}


def test_a_server_worker_stopped_3_s_past_the_timeout_costs_timeouts_then_refills(tmp_path):
    # client.timeout 1 s < the 3 s stop: the stopped worker's connections time out
    # (client failures: tolerated by max_failures, in hold:1 so the final hold is clean).
    run = Run(tmp_path, target=1000, steps=2, hold=10, final_hold=3, interval=1, timeout=1, max_failures=100_000)
    faulted = run.fault("server", "hold:1", before="final_hold", fault=stop_for_a_while)
    victim, out, summary = faulted.victim, faulted.out, faulted.summary
    # The timeouts are counted as the server not answering, and only as that.
    client = {k: n for k, n in summary["failures"].items() if not k.startswith("server:")}
    assert client.get("steady:no_answer_from_server", 0) > 0, client
    assert set(client) <= {"steady:no_answer_from_server", "first_ping:no_answer_from_server"}, client
    # The pool refilled: the run held its whole target through a clean final hold.
    assert summary["verdict"] == "held" and summary["held"] == 1000, out
    before_stop = [r for r in run.records() if r.phase != "stop"]
    assert before_stop[-1].client.opened >= 1000 + client["steady:no_answer_from_server"]
    # The worker was slow, not dead: not killed as hung, nothing lost with it.
    assert summary["worker_losses"] == [] and "killing it" not in run.hub_log()
    assert victim.pid in {w.pid for w in before_stop[-1].server_workers if w.alive}
