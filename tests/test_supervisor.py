"""Supervisor logic with a fake clock and fake children: hung workers versus our own stalls."""

from twisted.internet import defer
from twisted.internet.task import Clock

from connscale.metrics.stall import OWN_STALL
from connscale.procs.supervisor import Slot, Supervisor


class SilentChild:
    """A worker that is alive but never answers a call."""

    name = "t-client-worker-1"
    pid = 4242
    running = True

    def __init__(self):
        self.signals = []

    def signal(self, sig):
        self.signals.append(sig)

    def call(self, method, *args):
        return defer.Deferred()


def supervisor_with_a_silent_worker():
    clock = Clock()
    clock.advance(1000)
    sup = Supervisor(clock, "client", {}, "t", hung_after=30.0)
    sup.ensure(0)  # starts the supervisor's own heartbeat, spawns nothing
    child = SilentChild()
    sup.slots.append(Slot(0, child=child, alive=True, pid=4242, answered_at=clock.seconds()))
    return clock, sup, child


def poll_every_second(clock, sup, seconds):
    for _ in range(int(seconds)):
        clock.advance(1.0)
        sup.poll()


def test_a_worker_silent_longer_than_hung_after_is_killed():
    clock, sup, child = supervisor_with_a_silent_worker()
    poll_every_second(clock, sup, 29)
    assert child.signals == []
    poll_every_second(clock, sup, 3)
    assert child.signals[:1] == ["KILL"]
    assert any("has not answered for 3" in e for e in sup.events)


def test_our_own_stall_is_not_held_against_the_workers():
    clock, sup, child = supervisor_with_a_silent_worker()
    poll_every_second(clock, sup, 2)
    clock.advance(40.0)  # the whole process was stopped (SIGSTOP) for 40 s
    sup.poll()
    assert child.signals == []
    assert any("stalled for 40s" in e for e in sup.events)
    # From then on it gets a fresh window, and is killed if it stays silent.
    poll_every_second(clock, sup, 29)
    assert child.signals == []
    poll_every_second(clock, sup, 3)
    assert child.signals[:1] == ["KILL"]


def test_slow_polls_alone_are_not_a_stall():
    # The heartbeat runs whatever the workers do; polls that come seldom
    # (a caller waiting on a slow round) must not look like our own stall.
    clock, sup, child = supervisor_with_a_silent_worker()
    for _ in range(int(OWN_STALL * 3)):
        clock.advance(1.0)  # heartbeats only
    sup.poll()
    assert not any("stalled" in e for e in sup.events)


class RecordingChild(SilentChild):
    def __init__(self):
        super().__init__()
        self.calls = []

    def call(self, method, *args):
        self.calls.append((method, args))
        return defer.succeed(None)


def test_an_agents_rate_is_split_by_what_each_worker_has_left_to_open():
    from connscale.records.packed import unpack
    from connscale.procs.records import ClientSpec, WorkerOrder

    sup = Supervisor(Clock(), "client", ClientSpec(rate=1000.0), "t")
    children = [RecordingChild() for _ in range(3)]
    for i, (child, held) in enumerate(zip(children, (100, 0, 0))):
        sup.slots.append(Slot(i, child=child, alive=True, last={"open": held}))
    sup.apply([WorkerOrder(100), WorkerOrder(200), WorkerOrder(100)])
    sent = [WorkerOrder.from_wire(unpack(child.calls[-1][1][0])) for child in children]
    assert [o.target for o in sent] == [100, 200, 100]
    rates = [o.rate for o in sent]
    # Together the ramping workers connect at the agent's rate, not at three times it.
    assert rates[1] == 2 * rates[2] and abs(rates[1] + rates[2] - 1000.0) < 1e-6
    assert 0 < rates[0] <= 1000.0 / 3 / 10  # the full one keeps a little, for replacements
    sup.set_rate(3000.0)
    assert [c.calls[-1][0] for c in children] == ["set_rate"] * 3
    assert abs(sum(c.calls[-1][1][0] for c in children[1:]) - 3000.0) < 1e-6


def test_the_controllers_orders_carry_no_rate_and_old_payloads_still_parse():
    from connscale.procs.records import WorkerOrder

    assert "rate" not in WorkerOrder(5).to_wire()
    assert WorkerOrder.from_wire({"target": 5, "routes": []}).rate is None
    assert WorkerOrder.from_wire({"target": 5, "routes": [], "rate": 250.0}).rate == 250.0


class ExitedChild(SilentChild):
    """A worker whose process has ended."""

    running = False


def ended(**how):
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    return Failure(ProcessTerminated(**how))


def test_a_lost_worker_is_recorded_with_how_it_ended_and_what_it_held():
    clock, sup, child = supervisor_with_a_silent_worker()
    slot = sup.slots[0]
    slot.last = {"open": 511, "opened": 600, "closed": 89}
    child = ExitedChild()
    slot.child = child
    clock.advance(5)
    sup._exited(slot, child, ended(signal=9))
    (loss,) = sup.losses
    # (its agent and its time in the run are the hub's to add, as it learns of it)
    assert loss.to_wire() == {"worker": "t-client-worker-1", "side": "client", "pid": 4242,
                              "how": "was killed by signal 9 (SIGKILL)", "connections": 511, "t": 1005.0,
                              "agent": "", "elapsed_s": None}
    assert sup.events[-1] == ("t-client-worker-1 (pid 4242) lost: it was killed by signal 9 (SIGKILL); "
                              "511 connections lost with it; restarting in 1s")
    assert sup.totals().failures == {"steady:worker_lost": 511}


def test_each_loss_is_handed_up_once():
    clock, sup, _ = supervisor_with_a_silent_worker()
    slot = sup.slots[0]
    assert sup.take_losses() == []
    for _ in range(2):
        child = ExitedChild()
        slot.child = child
        sup._exited(slot, child, ended(exitCode=1))
    assert [loss.how for loss in sup.take_losses()] == ["exited with status 1"] * 2
    assert sup.take_losses() == [] and len(sup.losses) == 2


def test_a_worker_killed_as_hung_is_recorded_as_our_kill():
    clock, sup, child = supervisor_with_a_silent_worker()
    poll_every_second(clock, sup, 32)
    assert child.signals[:1] == ["KILL"]
    sup._exited(sup.slots[0], child, ended(signal=9))
    (loss,) = sup.losses
    assert loss.how.startswith("was killed by its supervisor as hung (no answer for 3") and loss.connections == 0
    # The next loss of that slot is judged on its own.
    assert sup.slots[0].killed_as_hung == ""


def test_losses_kept_are_bounded_but_all_are_counted():
    from connscale.procs.records import MAX_LOSSES

    clock, sup, _ = supervisor_with_a_silent_worker()
    slot = sup.slots[0]
    for _ in range(MAX_LOSSES + 5):
        child = ExitedChild()
        slot.child = child
        sup._exited(slot, child, ended(exitCode=1))
    assert len(sup.losses) == MAX_LOSSES and sup.lost_workers == MAX_LOSSES + 5
    assert sup.losses[0].how == "exited with status 1"


def test_a_late_workers_run_state_is_read_from_the_kernel_only_once_it_is_late():
    asked = []

    def is_stopped(pid):
        asked.append(pid)
        return False

    clock, sup, child = supervisor_with_a_silent_worker()
    sup.is_stopped = is_stopped
    assert sup.workers()[0].stopped is None and asked == []
    poll_every_second(clock, sup, 3)
    row = sup.workers()[0]
    assert (row.silent_s, row.stopped, asked) == (3.0, False, [4242])


def test_the_kernel_tells_a_stopped_process_from_a_running_one():
    import os
    import signal
    import subprocess
    import sys
    import time

    from connscale.host.resources import process_stopped

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_stopped(proc.pid) is False
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not process_stopped(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process_stopped(proc.pid) is True
    finally:
        proc.kill()
        proc.wait()
    assert process_stopped(proc.pid) is None


def test_a_route_repeated_in_orders_is_checked_once_and_refused_alike(monkeypatch):
    """A million's orders repeat 640 routes 53 times: the agent checks each once."""
    import pytest

    from connscale.records.base import RecordError
    from connscale.procs import records

    checked = []
    real = records._checked_route
    monkeypatch.setattr(records, "_checked_route", lambda v: checked.append(list(v)) or real(v))
    monkeypatch.setattr(records, "_ROUTES_SEEN", {})
    row = ["127.0.0.2", "127.0.0.1", 10000, 264]
    order = {"target": 100, "routes": [row, ["127.0.0.3", "127.0.0.1", 10000, 264]]}
    orders = [records.WorkerOrder.from_wire(order) for _ in range(53)]
    assert checked == order["routes"]  # two distinct routes, each checked once
    assert all(o.routes == orders[0].routes for o in orders)
    assert orders[0].routes[0] == records.Route("127.0.0.2", "127.0.0.1", 10000, 264)
    # What the check refuses stays refused, however often it comes, and a bool
    # is not taken for the integer it equals.
    for bad in (["127.0.0.2", "127.0.0.1", True, 264], ["127.0.0.2", "127.0.0.1", 10000.0, 264],
                ["not an ip", "127.0.0.1", 10000, 264], ["127.0.0.2", "127.0.0.1", 10000, -1]):
        for _ in range(2):
            with pytest.raises(RecordError):
                records.route(bad)


class AnsweringChild(SilentChild):
    """Answers `snapshot_packed` at once, noting when it was asked."""

    def __init__(self, clock, asked):
        super().__init__()
        self.clock, self.asked = clock, asked

    def call(self, method, *args):
        self.asked.append((self.pid, round(self.clock.seconds() - 1000, 4)))
        from connscale.records.packed import pack
        return defer.succeed(pack({"open": 1, "pings": 0, "pongs": 0}))


def test_one_polls_questions_go_out_spread_over_the_poll_spread_not_at_once():
    clock = Clock()
    clock.advance(1000)
    sup = Supervisor(clock, "server", {}, "t")
    asked = []
    for i in range(4):
        child = AnsweringChild(clock, asked)
        child.pid = 100 + i
        sup.slots.append(Slot(i, child=child, alive=True, pid=100 + i, answered_at=clock.seconds()))
    done = sup.poll(wait=0.7, spread=0.5)  # binary fractions: the fake clock adds them exactly
    assert asked == [(100, 0.0)] and not done.called
    clock.pump([0.125, 0.125, 0.125])
    assert asked == [(100, 0.0), (101, 0.125), (102, 0.25), (103, 0.375)] and done.called
    assert all(s.last == {"open": 1, "pings": 0, "pongs": 0} for s in sup.slots)
    assert sup.count() == 4
    # A worker gone before its turn is simply not asked.
    sup.poll(wait=0.7, spread=0.5)
    sup.slots[3].child = None
    clock.advance(0.5)
    assert [pid for pid, _ in asked].count(103) == 1
