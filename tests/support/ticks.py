"""Driving the hub's once-a-second loop on a fake clock, and a worker whose answers the test
holds: shared by the collector's tick tests (tests/test_collect_tick.py) and the TLS metrics
tests (tests/test_tls_metrics.py)."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from connscale.control.collect import Collector


def run_until(clock: Clock, t: float) -> None:
    """Advance to `t`, stopping at every call due on the way (Clock.advance alone
    would run them all with the clock already at `t`)."""
    while due := [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= t]:
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(t - clock.seconds())


def seconds(collector: Collector, clock: Clock, n: int, each: Any = None) -> None:
    """Drive the hub's loop for n seconds: a tick at every whole second, as HubService does;
    `each(i)` runs half-way through second i."""
    for i in range(n):
        t = clock.seconds()
        collector.tick()  # not waited for: the line comes when it comes
        run_until(clock, t + 0.5)
        if each is not None:
            each(i)
        run_until(clock, t + 1.0)


class HeldChild:
    """A worker whose snapshot answers are held until released."""

    name = "t-client-worker-1"
    running = True

    def __init__(self) -> None:
        self.asked: list[defer.Deferred[Any]] = []
        self.signals: list[str] = []

    def call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.asked.append(d)
        return d

    def signal(self, name: str) -> None:
        self.signals.append(name)
