"""Noticing that this process itself stood still.

A process that was stopped (SIGSTOP), swapped out or paused in a debugger
sees every peer as silent for as long as it was gone. Whoever judges peers by
their silence (hung workers, lost agents) asks a `StallWatch` first: a beat
that runs every second whatever the peers do, so a long gap between two beats
can only mean that we did not run.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

#: A gap this long between two beats (normally a second apart) is our own stall.
OWN_STALL = 5.0


class StallWatch:
    def __init__(self, clock: IReactorTime, on_stall: Callable[[float], None],
                 threshold: float = OWN_STALL, beat: float = 1.0) -> None:
        self.clock = clock
        self.on_stall = on_stall
        self.threshold = threshold
        self.beat = beat
        self._last: float | None = None
        self._loop = LoopingCall(self.check)
        self._loop.clock = clock

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.beat)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def check(self) -> None:
        """Call before judging anyone's silence: reports a stall of ours once."""
        now = self.clock.seconds()
        if self._last is not None and now - self._last > self.threshold:
            self.on_stall(now - self._last)
        self._last = now
