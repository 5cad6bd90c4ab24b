import pytest
from twisted.internet.task import Clock

from connscale.net.wheel import TimerWheel


class Item:
    __slots__ = ("due", "fired", "name")

    def __init__(self, name):
        self.due = -1
        self.fired = []
        self.name = name

    def on_timer(self, now):
        self.fired.append(now)


@pytest.fixture
def wheel(clock: Clock) -> TimerWheel:
    """A wheel of 0.1 s ticks on the test's clock (at 0)."""
    return TimerWheel(clock, tick=0.1)


def test_never_fires_early_and_uses_one_delayed_call():
    clock = Clock()
    clock.advance(10.9)
    wheel = TimerWheel(clock, tick=0.01)
    items = [Item(i) for i in range(1000)]
    for i, it in enumerate(items):
        wheel.schedule(it, 10.9 + 1.0 + i * 0.001)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.999)
    assert not any(it.fired for it in items)
    for _ in range(150):
        clock.advance(0.01)
    for i, it in enumerate(items):
        assert len(it.fired) == 1
        assert it.fired[0] >= 10.9 + 1.0 + i * 0.001 - 1e-9
        assert it.fired[0] < 10.9 + 1.0 + i * 0.001 + 0.021  # one tick + one clock step
    assert clock.getDelayedCalls() == []


def test_cancel_and_reschedule_are_lazy(clock: Clock, wheel: TimerWheel) -> None:
    a, b = Item("a"), Item("b")
    wheel.schedule(a, 1.0)
    wheel.schedule(b, 1.0)
    wheel.cancel(a)
    wheel.schedule(b, 3.0)  # moved: the 1.0 entry is stale
    wheel.schedule(b, 3.0)  # same tick twice: still one firing
    clock.advance(1.5)
    assert a.fired == [] and b.fired == []
    clock.advance(2.0)
    assert a.fired == [] and b.fired == [3.5]


def test_earlier_schedule_rearms(clock: Clock, wheel: TimerWheel) -> None:
    late, early = Item("late"), Item("early")
    wheel.schedule(late, 5.0)
    wheel.schedule(early, 1.0)
    clock.advance(1.0)
    assert early.fired == [1.0]
    assert late.fired == []


def test_broken_callback_does_not_stop_the_rest(clock: Clock, wheel: TimerWheel) -> None:

    class Boom(Item):
        def on_timer(self, now):
            raise RuntimeError("boom")

    good = Item("good")
    wheel.schedule(Boom("x"), 1.0)
    wheel.schedule(good, 1.0)
    clock.advance(1.0)
    assert good.fired == [1.0]
    assert wheel.errors == 1
