"""deadline: waiting at most N seconds for Deferreds without cancelling them (one owner, STYLE 12).

Through the real thing: every poll of the hub (control/collect.py) and of a supervisor waits
this way (tests/test_collect_tick.py, tests/test_supervisor.py and the e2e runs)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from connscale.deadline import all_within, unless_fired, within


def test_within_fires_true_when_the_call_lands_and_leaves_its_result() -> None:
    clock, call = Clock(), defer.Deferred()
    waited = within(clock, call, 2.0)
    seen: list[object] = []
    call.addCallback(seen.append)
    call.callback("answer")
    assert waited.result is True
    assert seen == ["answer"]  # the call's own callbacks get its result
    assert clock.getDelayedCalls() == []  # no timer left behind


def test_within_fires_false_at_the_deadline_and_cancels_nothing() -> None:
    clock, call = Clock(), defer.Deferred()
    waited = within(clock, call, 2.0)
    clock.advance(1.999)
    assert not waited.called
    clock.advance(0.001)
    assert waited.result is False
    call.callback("late")  # the late answer still lands where it belongs
    assert call.result == "late" and waited.result is False


def test_a_failure_counts_as_landed_and_stays_the_calls() -> None:
    clock, call = Clock(), defer.Deferred()
    waited = within(clock, call, 2.0)
    call.errback(Failure(ValueError("no")))
    assert waited.result is True
    errors: list[Failure] = []
    call.addErrback(errors.append)
    assert errors and errors[0].check(ValueError)


def test_all_within_waits_for_every_call_or_the_deadline() -> None:
    clock = Clock()
    calls = [defer.Deferred() for _ in range(3)]
    waited = all_within(clock, calls, 1.0)
    calls[0].callback(1)
    calls[1].errback(Failure(RuntimeError("x")))
    assert not waited.called
    calls[2].callback(3)
    assert waited.result is True and clock.getDelayedCalls() == []
    assert calls[0].result == 1 and calls[2].result == 3
    calls[1].addErrback(lambda f: None)


def test_all_within_gives_up_on_the_slowest() -> None:
    clock = Clock()
    fast, slow = defer.Deferred(), defer.Deferred()
    waited = all_within(clock, [fast, slow], 1.0)
    fast.callback(None)
    clock.advance(1.0)
    assert waited.result is False and not slow.called


def test_all_within_nothing_fires_at_once() -> None:
    clock = Clock()
    assert all_within(clock, [], 1.0).result is True
    assert clock.getDelayedCalls() == []


def test_unless_fired_calls_back_only_when_late() -> None:
    clock = Clock()
    timed_out: list[str] = []
    on_time = unless_fired(clock, defer.Deferred(), 5.0, timed_out.append, "on time")
    late = unless_fired(clock, defer.Deferred(), 5.0, timed_out.append, "late")
    on_time.callback("done")
    assert on_time.result == "done"
    clock.advance(5.0)
    assert timed_out == ["late"]
    late.callback(None)
    assert clock.getDelayedCalls() == []
