"""Limit incidents: the moment a run meets a wall, snapshotted and named.

The controller feeds `IncidentDetector.observe` one stats record a second (the
same dict it writes to the timeline). An incident opens when

* failures of a cause first appear (``trigger: failures``),
* the ramp falls behind what was asked for a few seconds (``ramp_behind``),
* connscale's client workers stay saturated (``measuring_side``),
* ghosts persist while the kernel counts accept-queue overflows (``ghosts``),

at most once per wall and side. Each incident holds the count, the connect
rate, failures by cause over the last seconds, the kernel counters and their
change, and the busiest workers' CPU and loop lag, with the wall named by
`connscale.diagnose.walls`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from connscale.diagnose.observed import ServerWatch, observed_rows, server_side
from connscale.diagnose.walls import (
    Context,
    Finding,
    Window,
    WorkerLoad,
    accept_queue,
    measuring_side,
    name_stall,
    name_wall,
    workers_of,
)

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

KERNEL_KEYS = ("listen_overflows", "listen_drops", "abort_on_overflow", "syn_retrans", "tcp_timeouts",
               "syncookies_sent")


def failures_of(record: Mapping[str, Any]) -> dict[str, int]:
    """Client failures as "phase:cause", server ones as "server:phase:cause"."""
    out = dict((record.get("client") or {}).get("failures") or {})
    for key, n in ((record.get("server") or {}).get("failures") or {}).items():
        out[f"server:{key}"] = n
    return out


def _target(record: Mapping[str, Any]) -> int:
    return sum(int(a.get("target", 0)) for a in (record.get("clients") or {}).values() if a.get("connected", True))


def _asked_rate(record: Mapping[str, Any]) -> float:
    rate = 0.0
    for a in (record.get("clients") or {}).values():
        if a.get("connected", True) and int(a.get("target", 0)) > int(a.get("open", 0)):
            rate += float(a.get("rate") or 0.0)
    return rate


def load_summary(record: Mapping[str, Any], workers: Sequence[WorkerLoad] | None = None) -> dict[str, Any]:
    """Per side: the busiest worker's CPU and loop lag; whether the clients are saturated now.

    `workers`: `workers_of(record)` when the caller has it already (a hub
    steering 500 agents reads 25,000 worker rows a second; once is enough)."""
    if workers is None:
        workers = workers_of(record)
    out: dict[str, Any] = {}
    for side in ("client", "server"):
        mine = [w for w in workers if w.side == side and w.alive]
        if not mine:
            out[side] = {}
            continue
        busiest = max(mine, key=lambda w: ((w.lag_ms_mean or 0.0), (w.cpu or 0.0)))
        out[side] = {
            "cpu_max": max((w.cpu or 0.0) for w in mine),
            "cpu_total": round(sum((w.cpu or 0.0) for w in mine), 3),
            "lag_ms_max": max((w.lag_ms_max or 0.0) for w in mine),
            "lag_ms_mean": round(sum((w.lag_ms_mean or 0.0) for w in mine) / len(mine), 1),
            "saturated": sum(1 for w in mine if w.saturated),
            "silent": sum(1 for w in mine if w.silent),
            "worker": busiest.name,
        }
    out["measuring_side_saturated"] = bool(out["client"] and out["client"]["saturated"])
    return out


class IncidentDetector:
    def __init__(self, failure_threshold: int = 1) -> None:
        self.failure_threshold = failure_threshold
        self.history: deque[Mapping[str, Any]] = deque(maxlen=WINDOW + 1)
        self.incidents: list[dict[str, Any]] = []
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
        self.load: dict[str, Any] = {}
        #: Server-side walls from the observers' rows (diagnose.observed).
        self.server = ServerWatch()

    # -- the window ------------------------------------------------------------------------
    def window(self, record: Mapping[str, Any]) -> Window:
        first = self.history[0] if self.history else record
        prev = self.history[-1] if self.history else record
        dt1 = max(1e-6, float(record.get("elapsed_s", 0.0)) - float(prev.get("elapsed_s", 0.0)))
        # Counters are cumulative from zero: before the first record nothing had failed,
        # so the first record's failures are all news (not "none", as `first` would say).
        now_f, then_f = failures_of(record), failures_of(first) if self.history else {}
        failures = {k: n - then_f.get(k, 0) for k, n in now_f.items() if n - then_f.get(k, 0) > 0}
        kernel = dict(record.get("kernel") or {})
        k0 = first.get("kernel") or {}
        client, client_prev = record.get("client") or {}, prev.get("client") or {}
        return Window(
            elapsed_s=float(record.get("elapsed_s", 0.0)),
            open=int(client.get("open", 0)),
            server_open=int((record.get("server") or {}).get("open", 0)),
            target=_target(record),
            connecting=sum(int(a.get("connecting", 0)) for a in (record.get("clients") or {}).values()),
            connect_rate=(int(client.get("opened", 0)) - int(client_prev.get("opened", 0))) / dt1 if prev is not record
            else 0.0,
            asked_rate=_asked_rate(record),
            failures=failures,
            kernel=kernel,
            kernel_delta={k: kernel[k] - k0[k] for k in KERNEL_KEYS if k in kernel and k in k0 and kernel[k] > k0[k]},
            ghosts=int(record.get("ghosts", 0)),
            ghosts_max=max(int(r.get("ghosts", 0)) for r in (*self.history, record)),
            workers=tuple(workers_of(record)),
            said=dict(client.get("said") or {}),
            server_wall=server_side(observed_rows(record)),
        )

    # -- one second --------------------------------------------------------------------------
    def observe(self, record: Mapping[str, Any], ctx: Context | None = None) -> list[dict[str, Any]]:
        """Take one stats record; returns the incidents it opened."""
        ctx = ctx or Context()
        w = self.window(record)
        self.load = load_summary(record, w.workers)
        new: list[dict[str, Any]] = []

        # Failures: every cause that appeared this second, once the total crossed the threshold.
        prev = failures_of(self.history[-1]) if self.history else {}
        now_f = failures_of(record)
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

        # The measuring side: client workers saturated for SUSTAIN seconds.
        if w.saturated("client"):
            self._saturated += 1
            self.saturated_seconds += 1
        else:
            self._saturated = 0
        if self._saturated >= SUSTAIN:
            self._open(new, "measuring_side", measuring_side(w, ctx), w, record)

        # The ramp: behind what was asked, after a grace period from the last target change.
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

        # Ghosts with accept-queue overflows in the kernel's counters.
        overflow = any(w.kernel_delta.get(k) for k in ("listen_overflows", "listen_drops"))
        # A handful is enough: a full queue holds only backlog + 1 of them. While
        # clients connect, client-open runs ahead of server-open by the accepts in
        # flight; ghosts that stay once connecting stops are the stuck kind.
        settled = w.connect_rate < max(1.0, 0.01 * w.asked_rate) or w.open >= w.target
        ghostly = w.ghosts >= max(5, w.open // 100) and overflow and settled
        self._ghostly = self._ghostly + 1 if ghostly else 0
        if self._ghostly >= SUSTAIN:
            self._open(new, "ghosts", accept_queue(w, ctx, None), w, record)

        # The server's side, as its observer sees it: a wall that lasts, or the server gone.
        for finding in self.server.observe(record, observed_rows(record)):
            self._open(new, "observer", finding, w, record)

        self.history.append(record)
        return new

    def _open(self, new: list[dict[str, Any]], trigger: str, finding: Finding, w: Window,
              record: Mapping[str, Any]) -> None:
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

    def unjudged(self, failures: Mapping[str, int]) -> list[str]:
        """Failure keys of a stats record (`failures_of`) that no incident names yet: not
        observed in a timeline second so far, or waiting up to SETTLE s for the other side's
        report. A run that stops on failures waits for these before it explains itself."""
        if sum(failures.values()) < self.failure_threshold:
            return []
        return sorted(k for k, n in failures.items() if n > 0 and k not in self._judged)

    @property
    def measuring_side_saturated(self) -> bool:
        """Were the client workers ever saturated long enough to count?"""
        return any(i["wall"] == "measuring_side" for i in self.incidents)


def _worker_rows(workers: list[WorkerLoad]) -> list[dict[str, Any]]:
    def busy(w: WorkerLoad) -> tuple[float, float, float]:
        return ((w.silent_s or 0.0) if w.silent else 0.0, w.lag_ms_mean or 0.0, w.cpu or 0.0)

    rows = []
    for side in ("client", "server"):
        mine = sorted((w for w in workers if w.side == side), key=busy, reverse=True)[:WORKERS_LISTED]
        rows += [{"side": w.side, "agent": w.agent, "index": w.index, "pid": w.pid, "open": w.open,
                  "cpu": w.cpu, "lag_ms_max": w.lag_ms_max, "lag_ms_mean": w.lag_ms_mean,
                  "nofile": w.nofile, "silent_s": w.silent_s, "alive": w.alive} for w in mine]
    return rows


def snapshot(trigger: str, finding: Finding, w: Window, record: Mapping[str, Any]) -> dict[str, Any]:
    """The incident as it goes into the timeline, stats and the summary (plain JSON)."""
    kernel = {k: v for k, v in w.kernel.items()}
    kernel.update({f"{k}_delta": v for k, v in w.kernel_delta.items()})
    return {
        "t": record.get("t", round(time.time(), 3)),
        "elapsed_s": w.elapsed_s,
        "trigger": trigger,
        **finding.to_dict(),
        "open": w.open,
        "server_open": w.server_open,
        "target": w.target,
        "connecting": w.connecting,
        "connect_rate": round(w.connect_rate, 1),
        "asked_rate": w.asked_rate,
        "ghosts": w.ghosts,
        "ghosts_max": w.ghosts_max,
        "failures": dict(w.failures),
        "kernel": kernel,
        "workers": _worker_rows(list(w.workers)),
        "rtt_window_ms": record.get("rtt_window_ms"),
    }


def saturated_phases(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Phase -> seconds in which connscale's client workers were saturated (from the timeline)."""
    out: dict[str, int] = {}
    for r in records:
        if (r.get("load") or {}).get("measuring_side_saturated"):
            phase = str(r.get("phase") or "")
            out[phase] = out.get(phase, 0) + 1
    # The drain at the end is not a measurement: closing connections saturates nothing that matters.
    return {p: n for p, n in out.items() if n >= SUSTAIN and p != "stop"}
