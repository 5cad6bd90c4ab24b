"""How busy this process is: event-loop lag and CPU, per reporting interval.

A worker whose loop is late reads every pong late: the RTT it records is then
its own queueing, and its ramp slows, whatever the server does. So each worker
measures that and says so in its snapshot, and the diagnosis can tell "the
server's limit" from "connscale's limit" (`connscale.diagnose.incidents`).

Cheap on purpose (a hundred workers share two cores): one timer every
`PROBE_INTERVAL` seconds whose lateness is the lag, `time.process_time()` for
CPU, one getrlimit per report.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Seconds between lag probes. Lag shorter than the loop's busy stretches is
#: still seen: the probe comes due during the stretch and fires after it.
PROBE_INTERVAL = 0.25


def _nofile() -> int:
    try:
        return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (OSError, ValueError):
        return -1


class LoadProbe:
    """Loop lag and CPU share since the last `take()`."""

    def __init__(
        self,
        clock: IReactorTime,
        interval: float = PROBE_INTERVAL,
        cpu_time: Callable[[], float] = time.process_time,
        nofile: Callable[[], int] = _nofile,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.cpu_time = cpu_time
        self.nofile = nofile
        self._call: IDelayedCall | None = None
        self._due = 0.0
        self._max = 0.0
        self._sum = 0.0
        self._n = 0
        self._wall0 = clock.seconds()
        self._cpu0 = cpu_time()
        # Time the garbage collector took, and its full collections: a pause the
        # loop lag sees too, named here by its cause.
        self._gc_started = 0.0
        self._gc_s = 0.0
        self._gc_full = 0

    def start(self) -> None:
        self._wall0 = self.clock.seconds()
        self._cpu0 = self.cpu_time()
        self._arm(self._wall0)
        gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # CPU time, not wall time: a collection preempted on a busy box would
        # otherwise count the run queue's wait as the collector's.
        if phase == "start":
            self._gc_started = time.thread_time()
            return
        self._gc_s += time.thread_time() - self._gc_started
        if info.get("generation") == 2:
            self._gc_full += 1

    def _arm(self, now: float) -> None:
        self._due = now + self.interval
        self._call = self.clock.callLater(self.interval, self._fire)

    def _fire(self) -> None:
        now = self.clock.seconds()
        lag = max(0.0, now - self._due)
        self._n += 1
        self._sum += lag
        if lag > self._max:
            self._max = lag
        self._arm(now)

    def take(self) -> dict[str, Any]:
        """{cpu: share of one core, lag_ms_max, lag_ms_mean, nofile, gc_ms, gc_full} since the last call."""
        now = self.clock.seconds()
        cpu = self.cpu_time()
        wall = now - self._wall0
        share = (cpu - self._cpu0) / wall if wall > 0 else 0.0
        # A probe overdue right now counts too: a loop stuck in one long
        # stretch would otherwise report no lag until the stretch ends.
        pending = max(0.0, now - self._due) if self._call is not None else 0.0
        lag_max = max(self._max, pending)
        mean = self._sum / self._n if self._n else pending
        out = {
            "cpu": round(share, 3),
            "lag_ms_max": round(lag_max * 1000, 1),
            "lag_ms_mean": round(mean * 1000, 1),
            "nofile": self.nofile(),
            "gc_ms": round(self._gc_s * 1000, 2),
            "gc_full": self._gc_full,
        }
        self._gc_s, self._gc_full = 0.0, 0
        self._wall0, self._cpu0 = now, cpu
        self._max = self._sum = 0.0
        self._n = 0
        return out
