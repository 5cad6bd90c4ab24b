"""A timer wheel: one reactor `DelayedCall` for any number of connections.

Why not `txaio.make_batched_timer`: it quantises every deadline to whole
seconds *downwards* (a 1 s timeout armed at t=10.9 fires at t=11.0, 0.1 s
late for nobody and 0.9 s early for the ping), wraps each call in a closure
plus a `_BatchedCall`, and cancels with `list.remove` (O(n) per pong). Here a
deadline is rounded *up* to the next tick, so nothing fires early; an item
carries a single integer `due` and cancelling is O(1): a stale entry is
recognised and skipped when its slot fires.

Items are any objects with a writable integer attribute `due` and a method
`on_timer(now)`; connections use `__slots__` for both, so being scheduled
costs one list entry.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()

UNSCHEDULED = -1
_ceil = math.ceil


class TimerItem(Protocol):
    due: int

    def on_timer(self, now: float) -> None: ...


class TimerWheel:
    def __init__(
        self,
        clock: IReactorTime,
        tick: float = 0.01,
        fire: Callable[[Any, float], None] | None = None,
        phase: float = 0.0,
    ) -> None:
        """`fire(item, now)`, when given, is called instead of `item.on_timer(now)`
        (one call less per timer for the pool, which owns the policy anyway).

        Ticks fall at `k * tick + phase`. Processes that each start a wheel
        with their own random phase do not all wake (and send) at once.
        """
        if tick <= 0:
            raise ValueError("tick must be > 0")
        self._fire_item = fire
        self._clock = clock
        self._tick = tick
        self._phase = phase % tick
        self._slots: dict[int, list[Any]] = {}
        self._heap: list[int] = []
        self._call: IDelayedCall | None = None
        self._armed_for = 0
        self.errors = 0

    def __len__(self) -> int:
        """Entries held, including stale ones not yet swept."""
        return sum(len(s) for s in self._slots.values())

    def schedule(self, item: TimerItem, when: float) -> None:
        """Call `item.on_timer(now)` at the first tick at or after `when`."""
        tick = _ceil((when - self._phase) / self._tick)
        if item.due == tick:
            return  # already there; a second entry would fire it twice
        item.due = tick
        slot = self._slots.get(tick)
        if slot is None:
            self._slots[tick] = [item]
            heapq.heappush(self._heap, tick)
            if self._call is None or tick < self._armed_for:
                self._arm()
        else:
            slot.append(item)

    @staticmethod
    def cancel(item: TimerItem) -> None:
        item.due = UNSCHEDULED

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._slots.clear()
        self._heap.clear()

    def _arm(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if not self._heap:
            return
        self._armed_for = self._heap[0]
        delay = max(0.0, self._armed_for * self._tick + self._phase - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = None
        now = self._clock.seconds()
        # A small epsilon: float tick*k may land a hair above `now` when the
        # reactor wakes exactly on time, which would re-arm with zero delay.
        current = math.floor((now - self._phase) / self._tick + 1e-9)
        heap, slots = self._heap, self._slots
        fire = self._fire_item
        while heap and heap[0] <= current:
            tick = heapq.heappop(heap)
            items = slots.pop(tick, ())
            for item in items:
                if item.due != tick:
                    continue  # cancelled or rescheduled since
                item.due = UNSCHEDULED
                try:
                    if fire is None:
                        item.on_timer(now)
                    else:
                        fire(item, now)
                except Exception:
                    # One broken item must not stop the wheel for the rest.
                    self.errors += 1
                    log.failure("timer callback failed")
        self._arm()


class CallLaterTimers:
    """One reactor `callLater` per scheduled item: the stock Twisted way, for
    the pool when the fast path is off (`net.fastpath`). Same interface as
    `TimerWheel`: `schedule(item, when)`, `cancel(item)`, `stop()`; an item
    fires at `when` itself, not on a tick."""

    def __init__(self, clock: IReactorTime, fire: Callable[[Any, float], None] | None = None) -> None:
        self._clock = clock
        self._fire_item = fire
        self._calls: dict[Any, IDelayedCall] = {}
        self.errors = 0

    def __len__(self) -> int:
        return len(self._calls)

    def schedule(self, item: TimerItem, when: float) -> None:
        call = self._calls.pop(item, None)
        if call is not None and call.active():
            call.cancel()
        item.due = 0  # scheduled (the wheel's tick number means nothing here)
        delay = max(0.0, when - self._clock.seconds())
        self._calls[item] = self._clock.callLater(delay, self._fire, item)

    def cancel(self, item: TimerItem) -> None:
        item.due = UNSCHEDULED
        call = self._calls.pop(item, None)
        if call is not None and call.active():
            call.cancel()

    def stop(self) -> None:
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if call.active():
                call.cancel()

    def _fire(self, item: Any) -> None:
        self._calls.pop(item, None)
        item.due = UNSCHEDULED
        now = self._clock.seconds()
        try:
            if self._fire_item is None:
                item.on_timer(now)
            else:
                self._fire_item(item, now)
        except Exception:
            self.errors += 1
            log.failure("timer callback failed")


def every(clock: IReactorTime, interval: float, fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` every `interval` seconds; returns a stop function.

    Used for the handful of per-process periodic jobs (status, reports).
    """
    from twisted.internet.task import LoopingCall

    loop = LoopingCall(fn)
    loop.clock = clock
    loop.start(interval, now=False)

    def stop() -> None:
        if loop.running:
            loop.stop()

    return stop
