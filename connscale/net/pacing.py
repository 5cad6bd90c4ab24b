"""Pacing the pool's connects: a token bucket that lets them out at a rate.

A ramp asks a pool for thousands of connections at once; opening them in one
turn would be a SYN flood of our own making (and a measurement of the kernel's
backlog, not of the server). `Pacer` holds the connects not yet started
(`pending`) and opens them at `rate` per second, a batch per wake-up, through
the callback it was given: it knows nothing of routes or connections.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

PACE_TICK = 0.01  # seconds between connect batches, at least
PACE_BURST = 0.1  # most connects in one batch, in seconds of the rate
#: Connects one pacing wake-up opens, at least, while the rate allows it within
#: PACE_TICK_MAX: a worker's share of a ramp is often a few hundred connects a
#: second (15,000/s over 53 workers: 283/s), and a wake-up every 10 ms for 2-3
#: connects cost the client workers 5,300 wake-ups a second together.
PACE_BATCH = 8
PACE_TICK_MAX = 0.05


def pace_tick(rate: float) -> float:
    """Seconds between pacing wake-ups at `rate` connects/s: PACE_BATCH connects
    each, within [PACE_TICK, PACE_TICK_MAX] (a batch stays under PACE_BURST's cap)."""
    if rate <= 0:
        return PACE_TICK_MAX
    return min(PACE_TICK_MAX, max(PACE_TICK, PACE_BATCH / rate))


class Pacer:
    """Connects waiting for their turn, opened at `rate()` per second by `open_one`.

    The rate is asked at every wake-up: a worker's share of a ramp changes while it
    runs (procs/worker.py gives its pool new settings), and so does the pace."""

    def __init__(self, clock: IReactorTime, rate: Callable[[], float], open_one: Callable[[], None]) -> None:
        self.clock = clock
        self.rate = rate
        self.open_one = open_one
        #: Connects asked for and not started yet.
        self.pending = 0
        self._tokens = 0.0
        self._last = 0.0
        self._call: IDelayedCall | None = None

    def add(self, n: int) -> None:
        """Open `n` more, the first at once unless a batch is already scheduled."""
        self.pending += n
        if self._call is None:
            self._last = self.clock.seconds()
            self._tokens = 1.0  # the first connect goes out at once
            self.wake()

    def take(self, n: int) -> int:
        """Take back up to `n` connects not started yet; how many were taken."""
        taken = min(n, self.pending)
        self.pending -= taken
        return taken

    def wake(self) -> None:
        """One batch: as many connects as the tokens earned since the last one allow."""
        self._call = None
        now = self.clock.seconds()
        rate = self.rate()
        # Up to PACE_BURST seconds' worth at once: a busy loop that came back
        # late catches up instead of losing the rate it was asked for.
        burst = max(1.0, rate * PACE_BURST)
        self._tokens = min(self._tokens + (now - self._last) * rate, burst)
        self._last = now
        n = min(int(self._tokens), self.pending)
        self._tokens -= n
        self.pending -= n
        open_one = self.open_one
        for _ in range(n):
            open_one()
        if self.pending:
            self._call = self.clock.callLater(pace_tick(rate), self.wake)
