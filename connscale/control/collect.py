"""Collection: poll the server workers and every agent once a second, merge, record.

The one place that turns reports into the run's numbers: `stats()` is what the
timeline records every second, what `ctl stats` and the console show, and what
`connscale run` watches. An agent that does not answer a poll within
`lost_after` seconds is marked lost (a hung or cut-off agent is seen within
seconds, not when TCP gives up).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from connscale.config.packed import PackError, unpack
from connscale.config.records import RecordError
from connscale.control.diagnosis import Diagnosis
from connscale.control.records import AgentReport
from connscale.control.registry import AgentHandle, Registry
from connscale.host.kernel import kernel_snapshot
from connscale.metrics.histograms import (
    RttAccumulator,
    encode_histogram,
    rtt_summary_ms,
)
from connscale.metrics.phases import window_phase
from connscale.metrics.snapshot import Snapshot, sum_snapshots
from connscale.metrics.stall import StallWatch
from connscale.metrics.timeline import Timeline
from connscale.procs.supervisor import Supervisor

log = Logger(namespace="connscale.control")

POLL_INTERVAL = 1.0
#: An agent silent this long (no answer to a report) is marked lost.
LOST_AFTER = 5.0


class EventLog:
    """Things that happened during a run, for the timeline (and the log)."""

    def __init__(self) -> None:
        self.pending: list[str] = []

    def note(self, message: str) -> None:
        self.pending.append(message)
        log.info("{message}", message=message)

    def take(self) -> list[str]:
        events, self.pending = self.pending, []
        return events


class Collector:
    def __init__(self, clock: Any, registry: Registry, events: EventLog, servers: Supervisor | None = None,
                 timeline: Timeline | None = None, lost_after: float = LOST_AFTER,
                 diagnosis: Diagnosis | None = None) -> None:
        self.clock = clock
        self.diagnosis = diagnosis
        self.registry = registry
        self.events = events
        self.servers = servers
        self.timeline = timeline
        self.lost_after = lost_after
        self.client_rtt = RttAccumulator()
        self.started = clock.seconds()
        self._poll_running: defer.Deferred[None] | None = None
        #: Seconds the last finished poll round took, from its first call to its
        #: last answer (None before the first): the timeline's `poll_ms`. Past a
        #: second, the hub can no longer keep one timeline line per second.
        self.poll_s: float | None = None
        # What the driver of the run says it is doing (ramp:K, hold:K,
        # final_hold...), stamped on every timeline second so percentiles
        # can be taken per phase instead of over the whole run.
        self.phase = ""
        self._window_phases: list[str] = [""]
        self._losses_recorded = 0
        #: Called with every timeline record as it is written (e.g. /metrics).
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        # Agents are judged by their silence; never by ours (a stopped hub).
        self.stall = StallWatch(clock, self._stalled)

    def _stalled(self, seconds: float) -> None:
        self.events.note(f"the controller was stalled for {seconds:.0f}s; "
                         "agent silence during the stall is not held against them")
        now = self.clock.seconds()
        for agent in self.registry.live():
            agent.answered_at = max(agent.answered_at, now)

    def set_phase(self, phase: str) -> str:
        self.phase = phase
        self._window_phases.append(phase)
        return phase

    # -- polling -------------------------------------------------------------------------
    def refresh(self, agent: AgentHandle) -> defer.Deferred[None]:
        def got(data: object) -> None:
            try:
                report = AgentReport.from_wire(unpack(data))
            except (RecordError, PackError) as e:
                self.events.note(f"agent {agent.name}: report refused: {e}")
                return
            agent.last = report
            if report.rtt:
                self.client_rtt.add(report.rtt)
            # A worker lost on an agent is an event of the run, in the timeline.
            for event in report.events:
                self.events.note(f"agent {agent.name}: {event}")

        def failed(_: Any) -> None:
            self.stall.check()
            silent = self.clock.seconds() - agent.answered_at
            if agent.connected and silent >= self.lost_after:
                self.registry.lost(agent, f"no answer for {silent:.0f} s (hung, or its network is down)")

        # One JSON string from an agent that offers it (AgentInfo.packed): a
        # report of 53 worker rows costs ~0.2 ms that way, ~90 ms as PB structures.
        method = "report_packed" if agent.info is not None and agent.info.packed else "report"
        return agent.call(self.clock, method, timeout=self.lost_after).addCallbacks(got, failed)

    def check_silent(self) -> None:
        """Agents whose last answer is older than `lost_after` are lost, even while a call is pending."""
        self.stall.start()
        self.stall.check()
        now = self.clock.seconds()
        for agent in self.registry.live():
            if now - agent.answered_at >= self.lost_after + POLL_INTERVAL:
                self.registry.lost(agent, f"no answer for {now - agent.answered_at:.0f} s (hung, or its network is down)")

    def poll(self) -> defer.Deferred[None]:
        """Refresh every source once; concurrent callers share one round."""
        if self._poll_running is not None:
            d: defer.Deferred[None] = defer.Deferred()
            self._poll_running.addBoth(lambda r: (d.callback(None), r)[1])
            return d
        self.check_silent()
        started = self.clock.seconds()
        calls = [self.refresh(a) for a in self.registry.live()]
        if self.servers is not None:
            servers = self.servers
            calls.append(servers.poll().addCallback(lambda _: [self.events.note(e) for e in servers.take_events()]))
        running = defer.gatherResults(calls, consumeErrors=True).addErrback(lambda _: None)
        self._poll_running = running

        def done(_: Any) -> None:
            self._poll_running = None
            self.poll_s = self.clock.seconds() - started

        running.addBoth(done)
        return running

    def tick(self) -> defer.Deferred[None]:
        """One second of the timeline: poll, merge, record."""
        return self.poll().addCallback(lambda _: self.record())

    def record(self) -> None:
        if self.timeline is None and not self.listeners:
            self.events.take()
            return
        window = self.client_rtt.take_window()
        record = self.stats(rtt=window)
        record["t"] = round(time.time(), 3)
        record["events"] = self.events.take()
        # The merged histogram of this second, so any percentile of any span
        # can be recomputed from the timeline alone.
        record["rtt_hist"] = encode_histogram(window) if window.get_total_count() else ""
        # A second that saw the phase change belongs to the ramp (or stop)
        # side of the change, so a hold's seconds never carry the head or the
        # tail of a connect burst or a drain.
        record["phase"] = window_phase(self._window_phases)
        # Like incidents: a timeline line carries the losses of its own second only.
        losses = record["worker_losses"]
        record["worker_losses"] = losses[self._losses_recorded:]
        self._losses_recorded = len(losses)
        record["poll_ms"] = round(self.poll_s * 1000, 1) if self.poll_s is not None else None
        self._window_phases = [self.phase]
        if self.diagnosis is not None:
            try:
                self.diagnosis.observe(record)
            except Exception:
                # Naming walls must never cost the run its record of them.
                record["incidents"] = []
                log.failure("the incident detector failed")
        if self.timeline is not None:
            self.timeline.write(record)
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                log.failure("a timeline listener failed")

    # -- numbers ---------------------------------------------------------------------------
    def client_totals(self) -> Snapshot:
        # A disconnected agent's last report is history, not connections held.
        return sum_snapshots(a.last.totals for a in self.registry.live() if a.last is not None)

    def server_totals(self) -> Snapshot:
        return self.servers.totals() if self.servers is not None else Snapshot()

    def count(self) -> defer.Deferred[int]:
        """The servers' count of open connections, fresh."""
        if self.servers is None:
            return defer.succeed(0)
        servers = self.servers
        return servers.poll().addCallback(lambda _: servers.count())

    def stats(self, rtt: Any = None) -> dict[str, Any]:
        server = self.server_totals()
        client = self.client_totals()
        agents = self.registry.agents.values()
        out: dict[str, Any] = {
            "elapsed_s": round(self.clock.seconds() - self.started, 3),
            # The phase now; a timeline line replaces it with its second's phase.
            "phase": self.phase,
            "server": server.counts(),
            "client": client.counts(),
            "clients": {
                a.name: {
                    "connected": a.connected,
                    "target": a.target,
                    "open": a.open(),
                    "connecting": a.last.connecting if a.last is not None else 0,
                    "disconnects": a.losses,
                    "lost_reason": a.lost_reason,
                    "failures": dict(a.last.totals.failures) if a.last is not None else {},
                    "workers": [w.to_wire() for w in a.last.workers] if a.last is not None else [],
                    # Connects per second it was asked for (its --rate, or set_rate).
                    "rate": a.rate,
                }
                for a in agents
            },
            "rtt_ms": rtt_summary_ms(self.client_rtt.total),
            # Connections a client believes open that no server holds: the
            # half-open "ghosts" of an overflowing accept queue.
            "ghosts": max(0, client.open - server.open),
            "workers": {
                "server": len(self.servers.slots) if self.servers is not None else 0,
                "client": sum(len(a.worker_targets) for a in agents),
            },
            "server_workers": [w.to_wire() for w in self.servers.workers()] if self.servers is not None else [],
            "server_lost_workers": self.servers.lost_workers if self.servers is not None else 0,
            # Each worker lost so far, how it ended and what it held, in words the summary repeats.
            "worker_losses": self.worker_losses(),
            "kernel": kernel_snapshot(),
        }
        if rtt is not None:
            out["rtt_window_ms"] = rtt_summary_ms(rtt)
        if self.diagnosis is not None:
            try:
                self.diagnosis.annotate(out)
            except Exception:
                log.failure("the load summary failed")
        return out

    def worker_losses(self) -> list[dict[str, Any]]:
        """The hub's lost server workers (`procs.records.WorkerLoss`), with when in the run."""
        if self.servers is None:
            return []
        return [{**loss.to_wire(), "elapsed_s": round(loss.t - self.started, 3)} for loss in self.servers.losses]

    def clients(self) -> list[dict[str, Any]]:
        """Every agent the controller knows, connected or not."""
        return [
            {
                "name": a.name,
                "connected": a.connected,
                "host": a.info.host if a.info else None,
                "pid": a.info.pid if a.info else None,
                "workers": len(a.worker_targets),
                "target": a.target,
                "open": a.open(),
                "launched": a.launch is not None,
            }
            for a in sorted(self.registry.agents.values(), key=lambda a: a.name)
        ]
