"""The experiment of `connscale run`: ramp in steps, hold, stop on a reason.

`Scenario` drives a hub it is handed (anything with `call(verb, *args)`, the
operator verbs over PB in a real run, a fake in unit tests) with an injected
clock. It knows nothing about processes or files: the caller checks its
children through `health` and writes what `Progress` holds when it is over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Protocol

import attrs
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from connscale.records.packed import PackError, unpack
from connscale.records.base import RecordError
from connscale.config.settings import ScenarioSettings
from connscale.diagnose.records import AgentLost, PhaseSpan, Step
from connscale.metrics import phases
from connscale.metrics.records import Stats

#: How long one answer from the hub may take before that second counts as silent.
CALL_TIMEOUT = 5.0
#: A hub silent this long (stopped, wedged) ends the run.
HUB_SILENT_LIMIT = 60.0
#: Reaching a step may take this many times its share of the ramp (plus
#: STEP_SLACK for the orders to reach the workers and their counts to come
#: back; the workers themselves start before the ramp, see `prepare`) before
#: the step is declared failed.
STEP_DEADLINE_FACTOR = 3.0
STEP_SLACK = 15.0
AGENT_REGISTER_TIMEOUT = 30.0
#: How long a run that stopped waits for the hub to name the failures it stopped on.
#: The hub judges once a second and gives a thin finding (a connection closed by
#: the server, before the server's own report says why) up to its SETTLE of 2 s.
VERDICT_WAIT = 5.0
#: How long the run waits, before its first connect, for a second in which every client
#: worker and every observer has reported: the idle baseline of the memory table.
BASELINE_WAIT = 5.0


#: The failure key of connections that went with a lost agent.
AGENT_LOST = "steady:agent_lost"
#: How long an agent may be away (its session to the hub closed) before it is lost: one
#: whose link dropped while the hub stalled logs in again within seconds, holding its
#: connections (client.hub_grace); a killed one never does.
AGENT_AWAY_GRACE = 10.0


class HubAPI(Protocol):
    def call(self, method: str, *args: Any) -> defer.Deferred[Any]: ...


class RunError(Exception):
    """Why a run stopped early; one line."""


@attrs.define
class StepRecord:
    """One ramp step as it happened; `rate_achieved` is what the ramp really did."""

    step: int
    target: int
    started: float
    rate_asked: float
    reached: float | None = None
    opened_from: int = 0
    #: Per agent: (its target at this step, the open count it started from, when it got there).
    agents: dict[str, tuple[int, int, float | None]] = attrs.Factory(dict)

    @property
    def seconds(self) -> float | None:
        return None if self.reached is None else self.reached - self.started

    def as_step(self) -> Step:
        """What the summary keeps of it."""
        seconds = self.seconds
        achieved = None
        if seconds:
            achieved = round((self.target - self.opened_from) / seconds, 1)
        return Step(step=self.step, target=self.target, started=round(self.started, 3),
                    seconds=None if seconds is None else round(seconds, 3), rate_asked=self.rate_asked,
                    rate_achieved=achieved)


@attrs.define
class Progress:
    """What the run watches, refreshed every second from the controller."""

    started: float
    step: int = 0
    steps: int = 0
    step_target: int = 0
    open: int = 0
    server_open: int = 0
    peak_open: int = 0
    #: client-side failures ("phase:cause") and server-side ones ("server:phase:cause")
    failures: dict[str, int] = attrs.Factory(dict)
    #: failures that count toward scenario.max_failures
    counted_failures: int = 0
    #: The hub's latest numbers (None before its first answer).
    stats: Stats | None = None
    phase: str = ""
    phases: list[PhaseSpan] = attrs.Factory(list)
    step_log: list[StepRecord] = attrs.Factory(list)
    #: open at the end of the final hold, if no counted failure happened during it
    held: int = 0
    hub_silent_s: float = 0.0
    events: list[str] = attrs.Factory(list)
    #: Seconds the agent took to start the client workers of the final target,
    #: before the ramp (setup time, not ramp time); None until they run.
    client_workers_start_s: float | None = None
    #: Each agent's part of the target (one agent: the whole of it).
    shares: dict[str, int] = attrs.Factory(dict)
    #: Agents of the fleet lost during the run.
    lost_agents: list[AgentLost] = attrs.Factory(list)
    #: Each agent's open count at the end of the final hold (its row of the summary).
    held_by_agent: dict[str, int] = attrs.Factory(dict)
    #: Each agent's largest open count before the stop.
    peak_by_agent: dict[str, int] = attrs.Factory(dict)

    def rate_achieved(self, agent: str) -> float | None:
        """Connects per second one agent's steps really did (its connections over its steps' time)."""
        opened = 0
        seconds = 0.0
        for record in self.step_log:
            if agent not in record.agents:
                continue
            target, started_from, reached = record.agents[agent]
            if reached is None:
                return None
            opened += max(0, target - started_from)
            seconds += reached - record.started
        return round(opened / seconds, 1) if seconds > 0 else None

    @property
    def failure_total(self) -> int:
        return sum(self.failures.values())


#: Splits the target across the agents once they are all registered: agent -> its share.
Splitter = Callable[[], "defer.Deferred[Mapping[str, int]]"]


class Scenario:
    """Drives one agent, or a fleet of them (`agents`, each holding its share of the target,
    as `split` decides once they are all registered; by default the first holds it all)."""

    def __init__(
        self,
        clock: IReactorTime,
        settings: ScenarioSettings,
        hub: HubAPI,
        agent: str | Sequence[str],
        show: Callable[[Progress], None] = lambda p: None,
        health: Callable[[], None] = lambda: None,
        split: Splitter | None = None,
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.hub = hub
        self.agents: tuple[str, ...] = (agent,) if isinstance(agent, str) else tuple(agent)
        self.agent = self.agents[0]
        self.split = split
        self.show = show
        self.health = health
        self.progress = Progress(started=clock.seconds())
        self._silent_since: float | None = None
        #: When each agent away from the hub was first seen so (`AGENT_AWAY_GRACE`).
        self._away_since: dict[str, float] = {}

    # -- phases ------------------------------------------------------------------
    def enter(self, phase: str) -> None:
        """Mark the start of a phase (`ramp:2`, `hold:2`, `final_hold`; see
        metrics.phases): the hub stamps its timeline seconds with it, so RTT is
        reported per phase, because a ramp's connect bursts are not the hold's latency."""
        now = self.clock.seconds()
        p = self.progress
        self.close_phases()
        p.phase = phase
        p.phases.append(PhaseSpan(phase, round(now, 3)))
        # Best effort: a hub that misses it still has the run's own record of phases.
        self.hub.call("set_phase", phase).addErrback(lambda _: None)

    def close_phases(self) -> None:
        p = self.progress
        if p.phases and p.phases[-1].end is None:
            p.phases[-1] = attrs.evolve(p.phases[-1], end=round(self.clock.seconds(), 3))

    # -- talking to the hub --------------------------------------------------------
    @defer.inlineCallbacks
    def refresh(self):
        """One fresh view of the controller's numbers; a silent hub is tolerated
        for HUB_SILENT_LIMIT seconds (it may be stopped, or swapping), then ends the run."""
        try:
            # One JSON string (records.packed): cheap for the hub and for us at any size.
            packed = yield self.hub.call("stats_packed").addTimeout(CALL_TIMEOUT, self.clock)
        except defer.TimeoutError:
            now = self.clock.seconds()
            if self._silent_since is None:
                self._silent_since = now - CALL_TIMEOUT
            silent = now - self._silent_since
            self.progress.hub_silent_s = max(self.progress.hub_silent_s, silent)
            if silent >= HUB_SILENT_LIMIT:
                raise RunError(f"the hub has not answered for {silent:.0f}s")
            return None
        try:
            stats = Stats.from_wire(unpack(packed))
        except (PackError, RecordError) as e:
            raise RunError(f"the hub's stats do not fit: {e}") from None
        if self._silent_since is not None:
            silent = self.clock.seconds() - self._silent_since
            self.progress.events.append(f"the hub did not answer for {silent:.0f}s, then resumed")
            self._silent_since = None
        self.absorb(stats)
        return stats

    def absorb(self, stats: Stats) -> None:
        p = self.progress
        p.stats = stats
        p.open = stats.client.open
        p.server_open = stats.server.open
        if p.phase != phases.STOP:
            # What the run reached, not what the agent still opened while being stopped.
            p.peak_open = max(p.peak_open, p.open)
        self._note_lost_agents(stats)
        if p.phase != phases.STOP:
            for name in p.shares:
                row = stats.clients.get(name)
                if row is not None and row.connected:
                    p.peak_by_agent[name] = max(p.peak_by_agent.get(name, 0), row.open)
        p.failures = stats.failures()
        # A reset the server saw is the client's failure too and is counted
        # there; the server's own tally only counts when asked for.
        counted = stats.client.failure_total
        if self.settings.count_server_failures:
            counted += stats.server.failure_total
        # A lost agent's connections went with it: counted as lost (its own counters left the
        # client totals with it).
        for lost in p.lost_agents:
            p.failures[AGENT_LOST] = p.failures.get(AGENT_LOST, 0) + lost.connections
            counted += lost.connections
        p.counted_failures = counted
        self.show(p)

    def _note_lost_agents(self, stats: Stats, grace: float = AGENT_AWAY_GRACE) -> None:
        """An agent of the fleet away from the hub for `grace` seconds, once its share was ordered."""
        p = self.progress
        known = {lost.agent for lost in p.lost_agents}
        now = self.clock.seconds()
        for name in p.shares:
            row = stats.clients.get(name)
            if row is not None and row.connected:
                self._away_since.pop(name, None)
            if name in known or row is None or row.connected or not row.target:
                continue
            if now - self._away_since.setdefault(name, now) < grace:
                continue
            p.lost_agents.append(AgentLost(agent=name, host=row.host, connections=row.open,
                                           reason=row.lost_reason,
                                           elapsed_s=round(self.clock.seconds() - p.started, 3)))
            p.events.append(p.lost_agents[-1].describe())

    # -- stop conditions -------------------------------------------------------------
    def check(self) -> None:
        self.health()
        limit = self.settings.max_failures
        p = self.progress
        if p.lost_agents and p.phase != phases.STOP:
            raise RunError("; ".join(lost.describe() for lost in p.lost_agents))
        if p.counted_failures > limit:
            top = ", ".join(f"{k}={v}" for k, v in sorted(p.failures.items(), key=lambda kv: -kv[1])[:3])
            raise RunError(f"failures exceeded scenario.max_failures={limit}: {top}")
        if self.clock.seconds() - p.started > self.settings.time_limit:
            raise RunError(f"scenario.time_limit of {self.settings.time_limit:g}s reached")

    @defer.inlineCallbacks
    def watch(self, seconds: float, until: Callable[[], bool] | None = None):
        """Refresh once a second for `seconds` of seeing the hub; True as soon as `until()` holds.

        Seconds in which the hub did not answer do not count: a step cannot be
        judged late, nor a hold complete, on numbers nobody could read.
        """
        end = self.clock.seconds() + seconds
        while self.clock.seconds() < end:
            began = self.clock.seconds()
            yield task.deferLater(self.clock, 1.0, lambda: None)
            if (yield self.refresh()) is None:
                end += self.clock.seconds() - began
            self.check()
            if until is not None and until():
                return True
        return False

    @defer.inlineCallbacks
    def settle(self):
        """Once the run has stopped: refresh until the hub has named every failure in
        its numbers (`unjudged_failures` empty), at most VERDICT_WAIT seconds.

        A run stops on the first counted failure it sees, which may be before the
        hub's detector has judged that second, or before the other side's report
        has reached it; the explanation must not depend on either."""
        deadline = self.clock.seconds() + VERDICT_WAIT
        while self.unjudged() and self.clock.seconds() < deadline:
            yield task.deferLater(self.clock, 1.0, lambda: None)
            try:
                yield self.refresh()
            except RunError:
                return  # a hub gone silent: the summary says what we had

    def unjudged(self) -> tuple[str, ...]:
        """Failures in the hub's latest numbers that it has not named yet."""
        stats = self.progress.stats
        return stats.unjudged_failures if stats is not None else ()

    @defer.inlineCallbacks
    def fresh(self):
        """Refresh until the hub answers (a silent hub ends the run after HUB_SILENT_LIMIT)."""
        while (yield self.refresh()) is None:
            self.check()
            yield task.deferLater(self.clock, 1.0, lambda: None)

    def agent_connected(self) -> bool:
        return not self.missing_agents()

    def missing_agents(self) -> list[str]:
        """The agents of the run not connected to the hub now."""
        stats = self.progress.stats
        rows = stats.clients if stats is not None else {}
        return [name for name in self.agents if not (name in rows and rows[name].connected)]

    @defer.inlineCallbacks
    def wait_agents(self):
        """Every agent of the run registered, within AGENT_REGISTER_TIMEOUT; else one line each."""
        if not (yield self.watch(AGENT_REGISTER_TIMEOUT, until=self.agent_connected)):
            missing = self.missing_agents()
            if missing == ["local"]:
                raise RunError(f"the local agent did not register within {AGENT_REGISTER_TIMEOUT:g} s")
            raise RunError("; ".join(f"agent {name}: not registered with the hub within "
                                     f"{AGENT_REGISTER_TIMEOUT:g} s" for name in missing))
        shares = dict((yield self.split()) if self.split is not None else {self.agent: self.settings.target})
        self.progress.shares = {name: int(shares.get(name, 0)) for name in self.agents}

    # -- the experiment ------------------------------------------------------------------
    @defer.inlineCallbacks
    def prepare(self):
        """Start every client worker the final target needs before the first step.

        An agent that starts them as the steps grow makes each step wait for a
        dozen interpreters starting on a box busy with the ramp (5-25 s per step
        at a million), so the step's rate says "slow" for a reason that is not
        connecting. Their start-up is setup time: it is reported as such (an
        event, `client_workers_start_s`), the ramp's rates are the connects'.
        """
        p = self.progress
        began = self.clock.seconds()
        shares = p.shares or {self.agent: self.settings.target}
        started = yield defer.gatherResults([self.hub.call("prepare", share, name)
                                             for name, share in shares.items() if share],
                                            consumeErrors=True).addErrback(_first_error)
        workers = sum(started)
        p.client_workers_start_s = round(self.clock.seconds() - began, 3)
        p.events.append(
            f"{workers} client worker{'' if workers == 1 else 's'} running for {self.settings.target} connections "
            f"(started in {p.client_workers_start_s:.1f} s, before the ramp)"
        )
        return workers

    def idle_reported(self, workers: int) -> bool:
        """The latest stats hold a fresh report of every client worker of our agents and of every
        connected observer (its target read): what memory looks like before any connection."""
        stats = self.progress.stats
        if stats is None:
            return False
        rows = [stats.clients.get(name) for name in self.agents]
        if any(row is None or row.stale_s != 0.0 for row in rows):
            return False
        if sum(len(row.workers) for row in rows if row is not None) < workers:
            return False
        return all(o.stale_s == 0.0 and o.targets for o in stats.observers.values() if o.connected)

    @defer.inlineCallbacks
    def pace(self):
        """The fleet's rate, paced per agent: each connects at its share of it, so every agent
        reaches each step's share in the same time."""
        sc, p = self.settings, self.progress
        if len(p.shares) < 2:
            return  # one agent runs at the whole rate (its --rate)
        for name, share in p.shares.items():
            if share:
                yield self.hub.call("set_rate", max(1.0, sc.rate * share / sc.target), name)

    def reached(self, record: StepRecord) -> bool:
        """Every agent at its step's target (each one's time noted as it gets there), and the total."""
        p = self.progress
        now = self.clock.seconds()
        done = True
        for name, (target, start, at) in record.agents.items():
            # One agent's count is the clients' count.
            held = p.open if len(record.agents) == 1 else self._open_of(name)
            if at is None and held >= target:
                record.agents[name] = (target, start, now)
            elif at is None:
                done = False
        return done and p.open >= p.step_target

    @defer.inlineCallbacks
    def execute(self):
        sc, p = self.settings, self.progress
        self.enter(phases.SETUP)
        yield self.wait_agents()
        workers = yield self.prepare()
        yield self.pace()
        # One second with everything idle on record (diagnose.memory's baseline); bounded, never fatal.
        yield self.watch(BASELINE_WAIT, until=lambda: self.idle_reported(workers))
        self.check()  # a start-up that outlasted scenario.time_limit ends the run before any connect
        p.steps = sc.steps
        ordered = {name: 0 for name in p.shares}
        goal = sum(p.shares.values())
        step_time = goal / sc.rate / sc.steps
        for step in range(1, sc.steps + 1):
            p.step = step
            targets = {name: math.ceil(share * step / sc.steps) for name, share in p.shares.items()}
            new_target = sum(targets.values())
            self.enter(phases.ramp(step))
            record = StepRecord(step, new_target, self.clock.seconds(), sc.rate, opened_from=p.open)
            record.agents = {name: (targets[name], self._open_of(name), None) for name in targets}
            p.step_log.append(record)
            for name, target in targets.items():
                if target == ordered[name]:
                    continue
                placed = yield self.hub.call("connections_start", target - ordered[name], name)
                if placed < target:
                    who = "the client's" if len(targets) == 1 else f"agent {name}'s"
                    raise RunError(
                        f"step {step}: {who} routes hold at most {placed} connections "
                        "(client.per_route_max x source IPs x server ports); add source IPs or server ports"
                    )
                ordered[name] = target
            p.step_target = new_target
            deadline = step_time * STEP_DEADLINE_FACTOR + STEP_SLACK
            reached = yield self.watch(deadline, until=lambda: self.reached(record))
            if not reached:
                behind = [f"{name} {self._open_of(name)} of {target}" for name, (target, _, at) in
                          record.agents.items() if at is None]
                which = f" ({', '.join(behind)})" if len(record.agents) > 1 and behind else ""
                raise RunError(
                    f"step {step}: only {p.open} of {p.step_target} connections opened in {deadline:.0f}s "
                    f"(asked: {sc.rate:g}/s){which}"
                )
            record.reached = self.clock.seconds()
            final = step == sc.steps
            self.enter(phases.FINAL_HOLD if final else phases.hold(step))
            before = p.counted_failures
            yield self.watch(sc.final_hold if final else sc.hold)
            if final:
                # Judge the hold on numbers from after it, not on a silent hub's old ones.
                yield self.fresh()
                if self._away_since:
                    # An agent away as the hold ends has the rest of its grace to come back
                    # (then the hold is judged with it), else it is named lost (`check`).
                    yield self.watch(AGENT_AWAY_GRACE + 1.0, until=lambda: not self._away_since)
                p.held = p.open if p.counted_failures == before else 0
                p.held_by_agent = {name: self._open_of(name) for name in p.shares} if p.held else {}
        self.close_phases()

    def _open_of(self, agent: str) -> int:
        stats = self.progress.stats
        if self.agents == (agent,) and stats is not None:
            return stats.client.open
        row = stats.clients.get(agent) if stats is not None else None
        return row.open if row is not None and row.connected else 0


def _first_error(failure: Any) -> Any:
    """gatherResults' FirstError, as the error it carries."""
    if failure.check(defer.FirstError):
        return failure.value.subFailure
    return failure
