"""Collection: ask the server workers and every agent once a second, merge, record.

The one place that turns reports into the run's numbers: `stats()` (a
`metrics.records.Stats`) is what the timeline records every second, what `ctl
stats` and the console show, and what `connscale run` watches. An agent that does not answer a poll within
`lost_after` seconds is marked lost (a hung or cut-off agent is seen within
seconds, not when TCP gives up).

One line a second, whatever an agent does. Each second's line asks every
source that has no question outstanding, waits at most `answer_wait` for the
answers, and is written with what is in hand: an agent whose answer is late
counts with its last report, marked stale with its age (`stale_s` in its row,
its name in `stale`). An agent is asked one question at a time: a slow one is
not asked again until it answers (or its call times out at `lost_after`, when
it is marked lost).

Where a late answer's numbers go: an agent's counters are cumulative, so its
late report replaces the one in hand and the totals move once, in the first
line written after it lands. Its RTTs (the histogram of its pings since its
previous report) go into that same line's window (`rtt_hist`,
`rtt_window_ms`), and so do the failures and incidents its counters show:
nothing of it is dropped, nothing counted twice. A line's per-second fields
are therefore "what the hub learnt in that second". (An answer later than
`lost_after` is never read: the agent is lost by then, and that report's RTTs
with it; its counters come back with its next report if it returns.)
"""

from __future__ import annotations

import time
from typing import Any, Callable

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from connscale.records.packed import PackError
from connscale.deadline import all_within
from connscale.records.base import RecordError
from connscale.control.agent_rows import AgentWindow, agent_listing, agent_row
from connscale.control.diagnosis import Diagnosis
from connscale.control.observers import Observers
from connscale.control.registry import AgentHandle, Registry
from connscale.host.kernel import kernel_snapshot
from connscale.host.observed import ObservedEvent
from connscale.host.resources import process_resources
from connscale.metrics.cost import Cost, CostMeter
from connscale.metrics.histograms import Percentiles, RttAccumulator, decode_histogram, encode_histogram, rtt_summary_ms
from connscale.metrics.phases import window_phase
from connscale.metrics.records import KernelCounters, Stats, WorkerCount
from connscale.metrics.snapshot import Snapshot, sum_snapshots
from connscale.metrics.stall import StallWatch
from connscale.metrics.timeline import Timeline
from connscale.metrics.workers import MAX_LOSSES, WorkerLoss
from connscale.procs.supervisor import Supervisor

log = Logger(namespace="connscale.control")

POLL_INTERVAL = 1.0
#: An agent silent this long (no answer to a report) is marked lost.
LOST_AFTER = 5.0
#: How long a second's line waits for the answers to its questions before it
#: is written with what is in hand. Below the interval, with room for writing
#: the line; above an agent's own wait for its workers (agent.REPORT_WAIT), so
#: an agent with one slow worker still answers in time.
ANSWER_WAIT = 0.7
#: A report this recent is fresh enough: the agent is not asked again for it
#: (the tick and `connscale run`'s stats poll would otherwise each ask every
#: agent, and each agent every worker, twice a second).
FRESH = 0.5


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
    def __init__(self, clock: IReactorTime, registry: Registry, events: EventLog, servers: Supervisor | None = None,
                 timeline: Timeline | None = None, lost_after: float = LOST_AFTER,
                 diagnosis: Diagnosis | None = None, answer_wait: float = ANSWER_WAIT,
                 fresh: float = FRESH) -> None:
        self.clock = clock
        self.answer_wait = answer_wait
        self.fresh = fresh
        self.diagnosis = diagnosis
        self.registry = registry
        self.events = events
        self.servers = servers
        self.timeline = timeline
        self.lost_after = lost_after
        self.client_rtt = RttAccumulator()
        #: The clients' TLS handshake times, merged as their RTTs are.
        self.client_handshake = RttAccumulator()
        self.started = clock.seconds()
        #: CPU and RSS of every process of the run (metrics.cost), once per timeline line.
        self.cost_meter = CostMeter()
        self.cost: Cost | None = None
        #: Seconds the last poll round waited, from its first question to its
        #: last answer, or `answer_wait` when some answer was late (None before
        #: the first): the timeline's `poll_ms`.
        self.poll_s: float | None = None
        #: When the latest poll round started: reports older than it (less
        #: `fresh`) are stale.
        self._round_at: float | None = None
        # What the driver of the run says it is doing (ramp:K, hold:K,
        # final_hold...), stamped on every timeline second so percentiles
        # can be taken per phase instead of over the whole run.
        self.phase = ""
        self._window_phases: list[str] = [""]
        self._losses_recorded = 0
        #: Workers lost, server and client, in the order we learn of them (bounded: the hub keeps
        #: its first MAX_LOSSES, each agent reports its own first MAX_LOSSES).
        self.losses: list[WorkerLoss] = []
        #: Called with every timeline record as it is written (e.g. /metrics).
        self.listeners: list[Callable[[Stats], None]] = []
        # Agents are judged by their silence; never by ours (a stopped hub).
        self.stall = StallWatch(clock, self._stalled)
        #: Each agent's RTTs since the last line (its part of `client_rtt`'s window).
        self.agent_rtt: dict[str, AgentWindow] = {}
        #: Agent name -> its `clients:` entry's host (set by the controller).
        self.hosts: dict[str, str] | None = None
        #: The last line's RTT of its second, and that line's elapsed_s: what `stats()` answers
        #: as the RTT of the last second (a live view shows it, not the cumulative figure).
        self.last_window: tuple[Percentiles | None, float | None, dict[str, Percentiles | None]] = (None, None, {})
        #: Observers of the server under test (control.observers), asked in the same rounds.
        self.observers: Observers | None = None
        self._target_events_recorded = 0

    def _stalled(self, seconds: float) -> None:
        self.events.note(f"the controller was stalled for {seconds:.0f}s; "
                         "agent silence during the stall is not held against them")
        now = self.clock.seconds()
        observers = self.observers.registry.live() if self.observers is not None else []
        for agent in [*self.registry.live(), *observers]:
            agent.answered_at = max(agent.answered_at, now)

    def set_phase(self, phase: str) -> str:
        self.phase = phase
        self._window_phases.append(phase)
        return phase

    # -- polling -------------------------------------------------------------------------
    def refresh(self, agent: AgentHandle) -> defer.Deferred[None]:
        """Ask `agent` for its report (unless a question is outstanding: then that one's answer);
        fires when the answer is in, or the question failed."""
        if agent.asking is None or agent.asked_of is not agent.mind:
            return _follow(self._ask(agent))
        return _follow(agent.asking)

    def _ask(self, agent: AgentHandle) -> defer.Deferred[None]:
        def got(data: object) -> None:
            try:
                report = self.registry.admit(agent, data)  # parsed, and bounded per agent
            except (RecordError, PackError) as e:
                self.events.note(f"agent {agent.name}: report refused: {e}")
                return
            # Counters are cumulative: a late report replaces the one in hand
            # and its RTTs join the window of the line being gathered now.
            agent.last = report
            agent.reported_at = self.clock.seconds()
            if report.rtt:
                # Decoded once: it joins the merged window and this agent's own.
                hist = decode_histogram(report.rtt)
                self.client_rtt.add_histogram(hist)
                self.agent_rtt.setdefault(agent.name, AgentWindow()).add(report.rtt, hist)
            if report.handshake:
                self.client_handshake.add(report.handshake)
            # A worker lost on an agent is an event of the run, in the timeline.
            for event in report.events:
                self.events.note(f"agent {agent.name}: {event}")
            # Timed on our clock as it reaches us (within a poll of the loss): an agent's
            # clock may not agree with ours.
            at = round(self.clock.seconds() - self.started, 3)
            for loss in report.losses[: max(0, 2 * MAX_LOSSES - len(self.losses))]:
                self.losses.append(attrs.evolve(loss, agent=agent.name, elapsed_s=at))

        def failed(_: Any) -> None:
            self.stall.check()
            silent = self.clock.seconds() - agent.answered_at
            if agent.connected and silent >= self.lost_after:
                self.registry.lost(agent, f"no answer for {silent:.0f} s (hung, or its network is down)")

        def settled(_: Any) -> None:
            if agent.asking is asking:
                agent.asking = agent.asked_of = None

        # One JSON string (records.packed): a report of 53 worker rows costs ~0.2 ms
        # that way, ~90 ms as PB structures.
        asking = agent.call(self.clock, "report_packed", timeout=self.lost_after).addCallbacks(got, failed)
        agent.asking, agent.asked_of = asking, agent.mind
        asking.addBoth(settled)  # may run at once: an answer already in hand
        return asking

    def check_silent(self) -> None:
        """Agents whose last answer is older than `lost_after` are lost, even while a call is pending."""
        self.stall.start()
        self.stall.check()
        now = self.clock.seconds()
        for agent in self.registry.live():
            if now - agent.answered_at >= self.lost_after + POLL_INTERVAL:
                self.registry.lost(agent, f"no answer for {now - agent.answered_at:.0f} s (hung, or its network is down)")

    def poll(self, wait: float | None = None) -> defer.Deferred[None]:
        """Ask every source that has neither a question outstanding nor a fresh report; fire
        when every outstanding answer is in, or after `wait` (`answer_wait`) seconds.

        Never more than one question per agent (concurrent callers share them),
        and never a wait on the slowest: what is late counts when it lands."""
        self.check_silent()
        wait = self.answer_wait if wait is None else wait
        now = started = self.clock.seconds()
        self._round_at = started
        calls = []
        for agent in self.registry.live():
            if agent.asking is None and agent.reported_at is not None and now - agent.reported_at < self.fresh:
                continue
            calls.append(self.refresh(agent))
        if self.servers is not None:
            servers = self.servers
            calls.append(servers.poll(wait, self.fresh).addCallback(lambda _: self._server_events()))
        if self.observers is not None:
            calls += self.observers.poll()
        running = all_within(self.clock, calls, wait)

        def done(complete: bool) -> None:
            self.poll_s = self.clock.seconds() - started

        return running.addCallback(done)

    def _server_events(self) -> None:
        if self.servers is not None:
            for event in self.servers.take_events():
                self.events.note(event)

    def tick(self) -> defer.Deferred[None]:
        """One second of the timeline: ask, wait at most `answer_wait`, record what is in hand.

        The line is stamped with its second (`t`, `elapsed_s`: when its questions
        went out), not with when its answers were in (`poll_ms` later): lines
        stand one second apart however long each waited."""
        at, now = time.time(), self.clock.seconds()
        return self.poll().addCallback(lambda _: self.record(at, now))

    def record(self, at: float | None = None, now: float | None = None) -> None:
        # A server worker's loss noticed after the round's wait is this second's news.
        self._server_events()
        if self.timeline is None and not self.listeners:
            self.events.take()
            return
        window = self.client_rtt.take_window()
        agent_windows, self.agent_rtt = self.agent_rtt, {}
        stats = self.stats(rtt=window, agent_rtt=agent_windows)
        # The TLS handshakes finished in this second, merged the same way ("" without TLS).
        handshakes = self.client_handshake.take_window()
        # Like incidents: a timeline line carries the losses of its own second only.
        losses = stats.worker_losses
        new_losses = losses[self._losses_recorded:]
        self._losses_recorded = len(losses)
        line = attrs.evolve(
            stats,
            t=round(time.time() if at is None else at, 3),
            elapsed_s=stats.elapsed_s if now is None else round(now - self.started, 3),
            events=tuple(self.events.take()),
            # The merged histogram of this second, so any percentile of any span
            # can be recomputed from the timeline alone.
            rtt_hist=encode_histogram(window) if window.get_total_count() else "",
            handshake_hist=encode_histogram(handshakes) if handshakes.get_total_count() else "",
            # A second that saw the phase change belongs to the ramp (or stop)
            # side of the change, so a hold's seconds never carry the head or the
            # tail of a connect burst or a drain.
            phase=window_phase(self._window_phases),
            worker_losses=new_losses,
            target_events=self._new_target_events(),
            poll_ms=round(self.poll_s * 1000, 1) if self.poll_s is not None else None,
            # What connscale itself took this second: hub, agents, observers and every worker.
            cost=self._measure_cost(),
            # Judged below, as the line is observed; only a live view asks what is not judged yet.
            unjudged_failures=(),
            incidents=(),
        )
        self._window_phases = [self.phase]
        self.last_window = (line.rtt_window_ms, line.elapsed_s,
                            {name: row.rtt_window_ms for name, row in line.clients.items()})
        if self.diagnosis is not None:
            try:
                line = self.diagnosis.observe(line)
            except Exception:
                # Naming walls must never cost the run its record of them.
                log.failure("the incident detector failed")
        if self.timeline is not None:
            self.timeline.write(line)
        for listener in self.listeners:
            try:
                listener(line)
            except Exception:
                log.failure("a timeline listener failed")

    def _new_target_events(self) -> tuple[ObservedEvent, ...]:
        """Like worker losses: a line carries the target events of its own second only (its
        `observers` rows, beside the clients', come with stats())."""
        if self.observers is None:
            return ()
        events = self.observers.events
        new = tuple(events[self._target_events_recorded:])
        self._target_events_recorded = len(events)
        return new

    def _measure_cost(self) -> Cost:
        self.cost = self.cost_meter.observe(self.clock.seconds(), self.cost_readings())
        return self.cost

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

    def stats(self, rtt: Any = None, agent_rtt: dict[str, AgentWindow] | None = None) -> Stats:
        """The numbers now; `rtt` and `agent_rtt`: the merged and per-agent histograms of the line
        being written (its second's percentiles, and each agent's histogram in its row). Without
        them (a live answer), the RTT of one second is the last line's."""
        server = self.server_totals()
        client = self.client_totals()
        agents = self.registry.shown()  # departed agents leave the live record
        stale = {a.name: self.stale_s(a) for a in agents}
        line = rtt is not None
        last_window, last_at, _ = self.last_window
        windows = agent_rtt or {}
        stats = Stats(
            elapsed_s=round(self.clock.seconds() - self.started, 3),
            # The phase now; a timeline line replaces it with its second's phase.
            phase=self.phase,
            server=server,
            client=client,
            clients={a.name: agent_row(a, stale[a.name], self.host_of(a), *self._rtt_of(a.name, line, windows))
                     for a in agents},
            # Connected agents counted with an old report (or none yet) in this record.
            stale=tuple(sorted(a.name for a in agents if a.connected and stale[a.name] != 0.0)),
            rtt_ms=rtt_summary_ms(self.client_rtt.total),
            rtt_window_ms=rtt_summary_ms(rtt) if line else last_window,
            window_elapsed_s=None if line else last_at,
            # Every TLS handshake so far (all None without TLS).
            handshake_ms=rtt_summary_ms(self.client_handshake.total),
            # Connections a client believes open that no server holds: the
            # half-open "ghosts" of an overflowing accept queue.
            # Without a server of our own (client.url) there is no count to hold them against.
            ghosts=max(0, client.open - server.open) if self.servers is not None else 0,
            # False when the server is not connscale's (client.url): no server-side numbers.
            own_server=self.servers is not None,
            workers=WorkerCount(
                server=len(self.servers.slots) if self.servers is not None else 0,
                client=sum(len(a.worker_targets) for a in agents),
            ),
            server_workers=tuple(self.servers.workers()) if self.servers is not None else (),
            server_lost_workers=self.servers.lost_workers if self.servers is not None else 0,
            # Each worker lost so far, how it ended and what it held, in words the summary repeats.
            worker_losses=tuple(self.worker_losses()),
            kernel=KernelCounters.from_wire(kernel_snapshot()),
            # The last timeline line's (a stats call between two lines reads the same).
            cost=self.cost,
            observers=self.observers.rows(self._round_at) if self.observers is not None else {},
            target_events=tuple(self.observers.events) if self.observers is not None else (),
        )
        if self.diagnosis is not None:
            try:
                stats = self.diagnosis.annotate(stats)
            except Exception:
                log.failure("the load summary failed")
        return stats

    def _rtt_of(self, name: str, line: bool, windows: dict[str, AgentWindow]) -> tuple[Percentiles | None, str]:
        """An agent's RTT of one second in its row, and its histogram: its window's in a line
        being written, else (a live answer) the last line's, without the histogram."""
        if not line:
            return self.last_window[2].get(name), ""
        window = windows.get(name)
        return (window.percentiles(), window.encoded()) if window is not None else (None, "")

    def cost_readings(self) -> list[tuple[str, object, dict[str, Any]]]:
        """(kind, key, resources) of the hub, its server workers, every agent and its workers,
        and every observer (each one of connscale's processes)."""
        out: list[tuple[str, object, dict[str, Any]]] = [("hub", "hub", process_resources())]
        if self.servers is not None:
            out += [("server_workers", w.pid, w.resources) for w in self.servers.workers() if w.alive]
        for a in self.registry.agents.values():
            if a.last is None or not a.connected:
                continue
            if a.last.resources:
                out.append(("agents", a.name, a.last.resources))
            out += [("client_workers", (a.name, w.pid), w.resources) for w in a.last.workers if w.alive]
        if self.observers is not None:
            out += self.observers.cost_readings()
        return out

    def host_of(self, agent: AgentHandle) -> str:
        """Where an agent runs, as the operator named it: its `clients:` entry's host if it was
        launched from one, else the host name it registered with."""
        if self.hosts is not None and agent.name in self.hosts:
            return self.hosts[agent.name]
        return agent.info.host if agent.info is not None else ""

    def stale_s(self, agent: AgentHandle) -> float | None:
        """0.0 if the agent's report in hand is this round's (or was fresh at its start),
        else its age in seconds; None before its first report."""
        if agent.reported_at is None:
            return None
        now = self.clock.seconds()
        since = (self._round_at if self._round_at is not None else now) - self.fresh
        # The same line as poll()'s: a report fresh enough not to be asked again is this round's.
        return 0.0 if agent.reported_at > since else round(now - agent.reported_at, 1)

    def worker_losses(self) -> list[WorkerLoss]:
        """Lost workers, server and client (with the agent's name), each with when in the run."""
        # One list in the order losses reach us, so a timeline line can take the new ones by count.
        if self.servers is not None:
            for loss in self.servers.take_losses():
                self.losses.append(attrs.evolve(loss, elapsed_s=round(loss.t - self.started, 3)))
        return list(self.losses)

    def clients(self) -> list[dict[str, Any]]:
        """Every agent the controller knows, connected or not."""
        return agent_listing(self.registry.shown())


def _follow(d: defer.Deferred[Any]) -> defer.Deferred[None]:
    """A Deferred of our own that fires (with None) when `d` does, leaving `d`'s result alone."""
    out: defer.Deferred[None] = defer.Deferred()

    def fire(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(fire)
    return out
