"""Limit incidents: the moment a run meets a wall, snapshotted and named.

The controller feeds `IncidentDetector.observe` one stats record a second (the
`Stats` it writes to the timeline). An incident opens when

* failures of a cause first appear (``trigger: failures``),
* the ramp falls behind what was asked for a few seconds (``ramp_behind``),
* connscale's client workers stay saturated (``measuring_side``),
* ghosts persist while the kernel counts accept-queue overflows (``ghosts``),

at most once per wall and side. Each incident holds the count, the connect
rate, failures by cause over the last seconds, the kernel counters and their
change, and the busiest workers' CPU and loop lag, with the wall named by
`connscale.diagnose.walls`, as an `Incident` record (`metrics.records`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence

from connscale.diagnose.observed import ServerWatch, observed_rows, server_side
from connscale.diagnose.walls import accept_queue, measuring_side, name_stall, name_wall
from connscale.diagnose.window import Context, Finding, Window, WorkerLoad, worker_loads
from connscale.metrics.records import Incident, IncidentWorker, LoadSummary, SideLoad, Stats

#: Records (seconds) the window of an incident covers.
WINDOW = 5
#: Seconds a condition must hold before it is an incident (not a blip).
SUSTAIN = 3
#: Seconds after a target changes before a slow ramp counts: workers start, pace up.
RAMP_GRACE = 5.0
#: A ramp below this share of the asked rate is behind.
RAMP_BEHIND = 0.5
#: Seconds a failure whose evidence is thin waits for better evidence (a worker
#: seen stopped takes a poll or two to show) before its incident opens anyway.
SETTLE = 2.0
#: Incidents kept (the first ones: they explain the rest).
MAX_INCIDENTS = 32
#: Workers listed in an incident, per side (the busiest).
WORKERS_LISTED = 16

def _asked_rate(record: Stats) -> float:
    """Connects per second asked of the connected agents still short of their target."""
    return sum(a.rate or 0.0 for _, a in record.connected_agents() if a.target > a.open)


def load_summary(record: Stats, workers: Sequence[WorkerLoad] | None = None) -> LoadSummary:
    """Per side: the busiest worker's CPU and loop lag; whether the clients are saturated now.

    `workers`: `worker_loads(record)` when the caller has it already (a hub
    steering 500 agents reads 25,000 worker rows a second; once is enough)."""
    if workers is None:
        workers = worker_loads(record)
    def side(name: str) -> SideLoad | None:
        mine = [w for w in workers if w.side == name and w.alive]
        if not mine:
            return None
        busiest = max(mine, key=lambda w: ((w.lag_ms_mean or 0.0), (w.cpu or 0.0)))
        return SideLoad(
            cpu_max=max((w.cpu or 0.0) for w in mine),
            cpu_total=round(sum((w.cpu or 0.0) for w in mine), 3),
            lag_ms_max=max((w.lag_ms_max or 0.0) for w in mine),
            lag_ms_mean=round(sum((w.lag_ms_mean or 0.0) for w in mine) / len(mine), 1),
            saturated=sum(1 for w in mine if w.saturated),
            silent=sum(1 for w in mine if w.silent),
            worker=busiest.name,
        )

    client = side("client")
    return LoadSummary(client=client, server=side("server"), measuring_side_saturated=bool(client and client.saturated))


class IncidentDetector:
    def __init__(self, failure_threshold: int = 1) -> None:
        self.failure_threshold = failure_threshold
        self.history: deque[Stats] = deque(maxlen=WINDOW + 1)
        self.incidents: list[Incident] = []
        self.dropped = 0
        self._opened: set[tuple[str, str]] = set()
        self._pending: dict[str, float] = {}  # failure key -> when it first appeared
        #: Failure keys already named (an incident opened for their wall, or one was open already).
        self._judged: set[str] = set()
        self._behind = 0
        self._saturated = 0
        self._ghostly = 0
        self._target = 0
        self._target_since = 0.0
        #: Seconds in which the client workers were saturated (for the verdict).
        self.saturated_seconds = 0
        self.load = LoadSummary()
        #: Server-side walls from the observers' rows (diagnose.observed).
        self.server = ServerWatch()

    # -- the window ------------------------------------------------------------------------
    def window(self, record: Stats) -> Window:
        first = self.history[0] if self.history else record
        prev = self.history[-1] if self.history else record
        dt1 = max(1e-6, record.elapsed_s - prev.elapsed_s)
        # Counters are cumulative from zero: before the first record nothing had failed,
        # so the first record's failures are all news (not "none", as `first` would say).
        now_f, then_f = record.failures(), first.failures() if self.history else {}
        failures = {k: n - then_f.get(k, 0) for k, n in now_f.items() if n - then_f.get(k, 0) > 0}
        observed = observed_rows(record)
        return Window(
            elapsed_s=record.elapsed_s,
            open=record.client.open,
            server_open=record.server.open,
            target=record.target,
            connecting=record.connecting,
            # Never negative: a lost agent's counters leave the client totals (and an agent that
            # reconnects starts its counters afresh).
            connect_rate=max(0, record.client.opened - prev.client.opened) / dt1 if prev is not record else 0.0,
            asked_rate=_asked_rate(record),
            failures=failures,
            kernel=record.kernel,
            kernel_delta=record.kernel.delta(first.kernel),
            ghosts=record.ghosts,
            ghosts_max=max(r.ghosts for r in (*self.history, record)),
            workers=tuple(worker_loads(record)),
            said=record.client.said,
            server_wall=server_side(observed),
            server_watched=any(t.alive for o in observed for t in o.targets),
        )

    # -- one second --------------------------------------------------------------------------
    def observe(self, record: Stats, ctx: Context | None = None) -> list[Incident]:
        """Take one stats record; returns the incidents it opened."""
        ctx = ctx or Context()
        w = self.window(record)
        self.load = load_summary(record, w.workers)
        new: list[Incident] = []
        self._failures(new, record, w, ctx)
        self._measuring_side(new, record, w, ctx)
        self._ramp(new, record, w, ctx)
        self._ghosts(new, record, w, ctx)
        # The server's side, as its observer sees it: a wall that lasts, or the server gone.
        for finding in self.server.observe(record, observed_rows(record)):
            self._open(new, "observer", finding, w, record)
        self.history.append(record)
        return new

    def _failures(self, new: list[Incident], record: Stats, w: Window, ctx: Context) -> None:
        """Every cause that appeared this second, once the total crossed the threshold."""
        prev = self.history[-1].failures() if self.history else {}
        now_f = record.failures()
        if sum(now_f.values()) >= self.failure_threshold:
            fresh = sorted((k for k, n in now_f.items() if n > prev.get(k, 0)), key=lambda k: -(now_f[k] - prev.get(k, 0)))
            for key in fresh:
                self._pending.setdefault(key, w.elapsed_s)
        for key, since in list(self._pending.items()):
            finding = name_wall(key, w, ctx)
            if finding.confident or w.elapsed_s - since >= SETTLE:
                del self._pending[key]
                self._judged.add(key)
                self._open(new, "failures", finding, w, record)

    def _measuring_side(self, new: list[Incident], record: Stats, w: Window, ctx: Context) -> None:
        """The client workers saturated for SUSTAIN seconds."""
        if w.saturated("client"):
            self._saturated += 1
            self.saturated_seconds += 1
        else:
            self._saturated = 0
        if self._saturated >= SUSTAIN:
            self._open(new, "measuring_side", measuring_side(w, ctx), w, record)

    def _ramp(self, new: list[Incident], record: Stats, w: Window, ctx: Context) -> None:
        """Behind what was asked, after a grace period from the last target change."""
        t = w.elapsed_s
        if w.target != self._target:
            self._target, self._target_since = w.target, t
            self._behind = 0
        behind = (
            w.asked_rate > 0
            and w.target - w.open > w.asked_rate
            and w.connect_rate < RAMP_BEHIND * w.asked_rate
            and t - self._target_since >= RAMP_GRACE
        )
        self._behind = self._behind + 1 if behind else 0
        if self._behind >= SUSTAIN:
            self._open(new, "ramp_behind", name_stall(w, ctx), w, record)

    def _ghosts(self, new: list[Incident], record: Stats, w: Window, ctx: Context) -> None:
        """Ghosts with accept-queue overflows in the kernel's counters."""
        overflow = bool(w.kernel_delta.listen_overflows or w.kernel_delta.listen_drops)
        # A handful is enough: a full queue holds only backlog + 1 of them. While
        # clients connect, client-open runs ahead of server-open by the accepts in
        # flight; ghosts that stay once connecting stops are the stuck kind.
        settled = w.connect_rate < max(1.0, 0.01 * w.asked_rate) or w.open >= w.target
        ghostly = w.ghosts >= max(5, w.open // 100) and overflow and settled
        self._ghostly = self._ghostly + 1 if ghostly else 0
        if self._ghostly >= SUSTAIN:
            self._open(new, "ghosts", accept_queue(w, ctx, None), w, record)

    def _open(self, new: list[Incident], trigger: str, finding: Finding, w: Window, record: Stats) -> None:
        key = (finding.wall, finding.side)
        if key in self._opened:
            return
        self._opened.add(key)
        if len(self.incidents) >= MAX_INCIDENTS:
            self.dropped += 1
            return
        incident = snapshot(trigger, finding, w, record)
        self.incidents.append(incident)
        new.append(incident)

    def unjudged(self, failures: Mapping[str, int]) -> tuple[str, ...]:
        """Failure keys of a stats record (`Stats.failures()`) that no incident names yet: not
        observed in a timeline second so far, or waiting up to SETTLE s for the other side's
        report. A run that stops on failures waits for these before it explains itself."""
        if sum(failures.values()) < self.failure_threshold:
            return ()
        return tuple(sorted(k for k, n in failures.items() if n > 0 and k not in self._judged))

    @property
    def measuring_side_saturated(self) -> bool:
        """Were the client workers ever saturated long enough to count?"""
        return any(i.wall == "measuring_side" for i in self.incidents)


def _worker_rows(workers: list[WorkerLoad]) -> tuple[IncidentWorker, ...]:
    def busy(w: WorkerLoad) -> tuple[float, float, float]:
        return ((w.silent_s or 0.0) if w.silent else 0.0, w.lag_ms_mean or 0.0, w.cpu or 0.0)

    rows: list[IncidentWorker] = []
    for side in ("client", "server"):
        mine = sorted((w for w in workers if w.side == side), key=busy, reverse=True)[:WORKERS_LISTED]
        rows += [w.incident_row() for w in mine]
    return tuple(rows)


def snapshot(trigger: str, finding: Finding, w: Window, record: Stats) -> Incident:
    """The incident as it goes into the timeline, stats and the summary."""
    return Incident(
        t=record.t if record.t is not None else round(time.time(), 3),
        elapsed_s=w.elapsed_s,
        trigger=trigger,
        wall=finding.wall,
        side=finding.side,
        headline=finding.headline,
        evidence=tuple(finding.evidence),
        fix=tuple(finding.fix),
        open=w.open,
        server_open=w.server_open,
        target=w.target,
        connecting=w.connecting,
        connect_rate=round(w.connect_rate, 1),
        asked_rate=w.asked_rate,
        ghosts=w.ghosts,
        ghosts_max=w.ghosts_max,
        failures=dict(w.failures),
        kernel=w.kernel,
        kernel_delta=w.kernel_delta,
        workers=_worker_rows(list(w.workers)),
        rtt_window_ms=record.rtt_window_ms,
    )


def saturated_phases(records: Sequence[Stats]) -> dict[str, int]:
    """Phase -> seconds in which connscale's client workers were saturated (from the timeline)."""
    out: dict[str, int] = {}
    for r in records:
        if r.measuring_side_saturated:
            out[r.phase] = out.get(r.phase, 0) + 1
    # The drain at the end is not a measurement: closing connections saturates nothing that matters.
    return {p: n for p, n in out.items() if n >= SUSTAIN and p != "stop"}
