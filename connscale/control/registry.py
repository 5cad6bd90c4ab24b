"""The agent registry: who is registered under which name, over which connection.

A name belongs to one live session at a time. A registration is answered with a
session token; a second login under a name that is still connected is refused
unless it presents that token (the same agent, reconnecting before the hub saw
its old connection die). Host and pid, which anyone may read from `clients()`,
prove nothing. A disconnected name is free again, and keeps the target the
operator gave it, so a restarted agent gets its load back.

An agent that stops answering is marked lost, with the reason, and its
connection is dropped: the next report decides, not a TCP timeout minutes later.

A name is its owner's: after its session ends the name stays bound to its
token for `NAME_HOLD` seconds (until `release`, which `client_stop` does), so
another holder of the agent key cannot take the name of an agent that is
away and coming back; a newcomer is told how long to wait (`NameHeld`, which
agents retry). An ssh-launched agent holds a key for its own name only.

What one agent key may add to the hub is bounded here, whatever it sends: new
names per second (`NAME_RATE`, burst `NAME_BURST`) and in all (`MAX_NAMES`,
departed names without a target forgotten after `NAME_HOLD`), and per report
(`admit`): its worker rows to the workers it was asked to run, its events to
`EVENT_BURST` at `EVENT_RATE` per second (`MAX_AGENT_EVENTS` in its life), its
losses to what the collector keeps. A departed agent's row leaves the live
record (`shown`) `SHOW_DEPARTED` seconds after it left; the events keep it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.spread import pb

from connscale.control.errors import ControlError
from connscale.control.records import AgentInfo, AgentReport, RegisterAnswer

#: A call to an agent that takes longer than this has failed.
CALL_TIMEOUT = 10.0
#: Seconds a departed agent's name stays bound to its session token.
NAME_HOLD = 300.0
#: Seconds a departed agent's row stays in stats() and the timeline.
SHOW_DEPARTED = 15.0
#: Names the registry knows at most (a fleet of 250-500 agents, with room).
MAX_NAMES = 2048
#: New names per second, and at once (a whole fleet registering after a hub restart).
NAME_RATE = 50.0
NAME_BURST = 1000.0
#: Events per agent: per second, at once, and in the agent's whole life.
EVENT_RATE = 2.0
EVENT_BURST = 32.0
MAX_AGENT_EVENTS = 1000
#: Worker rows beyond the workers an agent was asked to run (one starting, one replaced).
ROW_SLACK = 2


class NameHeld(ControlError):
    """A departed agent's name, kept for its owner for a while: try again later."""


class Bucket:
    """A token bucket on a clock: `take()` is True while there is a token."""

    def __init__(self, clock: IReactorTime, rate: float, burst: float) -> None:
        self.clock = clock
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = clock.seconds()

    def take(self) -> bool:
        now = self.clock.seconds()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@attrs.define(eq=False)
class AgentHandle:
    name: str
    mind: pb.RemoteReference | None = None
    info: AgentInfo | None = None
    worker_targets: list[int] = attrs.Factory(list)
    last: AgentReport | None = None
    connected: bool = False
    launch: Any = None  # launch.LaunchedAgent when started over ssh
    registered: list[defer.Deferred[None]] = attrs.Factory(list)
    lock: defer.DeferredLock = attrs.Factory(defer.DeferredLock)
    losses: int = 0  # times the agent's session dropped
    session: str = ""
    #: Why the agent's last session ended ("" while connected).
    lost_reason: str = ""
    #: Clock time of the last answer from the agent (registration counts).
    answered_at: float = 0.0
    #: Connects per second its workers pace at (from its registration, then set_rate).
    rate: float = 0.0
    #: The report question outstanding, and the mind it was put to (control.collect
    #: asks one at a time: a slow agent is not asked again until it answers).
    asking: defer.Deferred[None] | None = None
    asked_of: Any = None
    #: Clock time the report in hand (`last`) arrived; None before the first.
    reported_at: float | None = None
    #: Clock time its last session ended (None while connected, or never connected).
    departed_at: float | None = None
    #: Its events: the budget left, and how many it sent in all, and whether their end was said.
    events: Bucket | None = None
    events_total: int = 0
    events_cut: bool = False

    @property
    def target(self) -> int:
        return sum(self.worker_targets)

    def open(self) -> int:
        return self.last.totals.open if self.last is not None else 0

    def call(self, clock: IReactorTime, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> defer.Deferred[Any]:
        """Call the agent's mind; a failure if it is not connected or does not answer in time."""
        if self.mind is None:
            return defer.fail(ControlError(f"agent {self.name} is not connected"))
        d = self.mind.callRemote(method, *args)
        d.addTimeout(timeout, clock)

        def answered(result: Any) -> Any:
            self.answered_at = clock.seconds()
            return result

        return d.addCallback(answered)


class Registry:
    def __init__(self, clock: IReactorTime, note: Callable[[str], None], kind: str = "agent") -> None:
        self.clock = clock
        self.note = note
        #: What its members are called in notes ("agent", "observer").
        self.kind = kind
        self.agents: dict[str, AgentHandle] = {}
        self.new_names = Bucket(clock, NAME_RATE, NAME_BURST)

    # -- sessions --------------------------------------------------------------------
    def _new(self, name: str) -> AgentHandle:
        """A handle for a name not seen before, within the name budget."""
        if len(self.agents) >= MAX_NAMES:
            self.forget_departed()
        if len(self.agents) >= MAX_NAMES:
            raise ControlError(f"the hub knows {MAX_NAMES} agent names already: no more")
        if not self.new_names.take():
            raise NameHeld(f"too many new agent names at once (more than {NAME_RATE:g} per second); "
                           "try again in 2 s")
        agent = self.agents[name] = AgentHandle(name, events=Bucket(self.clock, EVENT_RATE, EVENT_BURST))
        return agent

    def forget_departed(self) -> None:
        """Forget names that left more than NAME_HOLD ago and hold no target."""
        now = self.clock.seconds()
        for name, agent in list(self.agents.items()):
            if (not agent.connected and agent.departed_at is not None and now - agent.departed_at > NAME_HOLD
                    and not agent.target and not agent.registered and agent.launch is None):
                del self.agents[name]

    def release(self, name: str) -> None:
        """The operator stopped this agent: its name is free at once."""
        agent = self.agents.get(name)
        if agent is not None:
            agent.session = ""  # (it may still be leaving: then it leaves holding nothing)

    def register(self, name: str, mind: pb.RemoteReference, info: AgentInfo) -> tuple[AgentHandle, RegisterAnswer]:
        agent = self.agents.get(name)
        if agent is None:
            agent = self._new(name)
        elif (not agent.connected and agent.session and agent.departed_at is not None
              and not (info.session and secrets.compare_digest(info.session, agent.session))):
            held = NAME_HOLD - (self.clock.seconds() - agent.departed_at)
            if held > 0:
                raise NameHeld(
                    f"agent name {name!r} belongs to an agent that left {NAME_HOLD - held:.0f} s ago "
                    f"(pid {agent.info.pid if agent.info else '?'} on {agent.info.host if agent.info else '?'}); "
                    f"it is kept for it: try again in {held:.0f} s, or free it with client-stop {name}"
                )
        elif agent.connected and agent.mind is not mind:
            if not (info.session and secrets.compare_digest(info.session, agent.session)):
                # Two agents under one name would share one target and one row
                # of numbers: refuse the newcomer, loudly.
                held_by = f"pid {agent.info.pid} on {agent.info.host}" if agent.info else "another agent"
                raise ControlError(
                    f"{self.kind} name {name!r} is taken by {held_by}; "
                    + ("give this agent another --name" if self.kind == "agent" else "give it another --label")
                )
            # The same agent reconnecting before we noticed its old connection die.
            self.note(f"{self.kind} {name} registered again; the older session is replaced")
            old, agent.mind = agent.mind, None
            _drop(old)
        resumed = bool(info.session) and secrets.compare_digest(info.session, agent.session)
        agent.mind = mind
        agent.info = info
        agent.rate = info.rate
        agent.connected = True
        agent.departed_at = None
        agent.lost_reason = ""
        agent.answered_at = self.clock.seconds()
        if not resumed:
            agent.session = secrets.token_hex(32)
        # An agent that outlived a hub restart (or a network cut) keeps its
        # workers and targets: adopt what it holds instead of resetting it.
        held_targets = list(info.worker_targets)
        if sum(held_targets) or not agent.worker_targets:
            agent.worker_targets = held_targets
        self.note(
            f"{self.kind} {name} registered from {info.host} (pid {info.pid}, "
            f"{info.workers} workers, target {agent.target})" if self.kind == "agent" else
            f"{self.kind} {name} registered from {info.host} (pid {info.pid})"
        )
        waiting, agent.registered = agent.registered, []
        for d in waiting:
            d.callback(None)
        return agent, RegisterAnswer(agent.target, agent.session)

    def detached(self, name: str, mind: Any, reason: str = "its connection closed") -> None:
        agent = self.agents.get(name)
        if agent is None or agent.mind is not mind:
            return
        self._gone(agent, reason)

    def lost(self, agent: AgentHandle, reason: str) -> None:
        """The agent stopped answering: mark it lost now and close its connection."""
        if not agent.connected:
            return
        mind = agent.mind
        self._gone(agent, reason)
        _drop(mind)

    def _gone(self, agent: AgentHandle, reason: str) -> None:
        agent.connected = False
        agent.departed_at = self.clock.seconds()
        agent.mind = None
        agent.losses += 1
        agent.lost_reason = reason
        held = f"; it held {agent.open()} connections at its last report" if self.kind == "agent" else ""
        self.note(f"{self.kind} {agent.name} lost: {reason}{held}")

    def wait_registered(self, name: str) -> defer.Deferred[None]:
        agent = self.agents.get(name)
        if agent is not None and agent.connected:
            return defer.succeed(None)
        if agent is None:
            agent = self.agents[name] = AgentHandle(name, events=Bucket(self.clock, EVENT_RATE, EVENT_BURST))
        d: defer.Deferred[None] = defer.Deferred()
        agent.registered.append(d)
        return d

    # -- reports -------------------------------------------------------------------------
    def admit(self, agent: AgentHandle, data: object) -> AgentReport:
        """An agent's report (as `report_packed` answers it) within what one agent may add:
        RecordError when it does not parse; trimmed to the agent's budgets when it does."""
        report = AgentReport.from_packed(data)
        rows = max(len(agent.worker_targets), agent.info.workers if agent.info else 0) + ROW_SLACK
        events = list(report.events)
        if events:
            bucket = agent.events or Bucket(self.clock, EVENT_RATE, EVENT_BURST)
            agent.events = bucket
            kept = [e for e in events if agent.events_total < MAX_AGENT_EVENTS and bucket.take()]
            agent.events_total += len(kept)
            if len(kept) < len(events):
                if not agent.events_cut:
                    agent.events_cut = True
                    kept.append(f"more events than the hub keeps from one agent ({EVENT_RATE:g}/s, "
                                f"{MAX_AGENT_EVENTS:,} in all): the rest are dropped")
            else:
                agent.events_cut = False
            events = kept
        if len(report.workers) > rows or tuple(events) != report.events:
            report = attrs.evolve(report, workers=report.workers[:rows], events=tuple(events))
        return report

    # -- lookups ---------------------------------------------------------------------------
    def live(self) -> list[AgentHandle]:
        return [a for a in self.agents.values() if a.connected]

    def shown(self) -> list[AgentHandle]:
        """The agents of the live record (stats, timeline, `clients`): the connected ones and
        those that left less than SHOW_DEPARTED seconds ago."""
        now = self.clock.seconds()
        return [a for a in self.agents.values()
                if a.connected or (a.departed_at is not None and now - a.departed_at < SHOW_DEPARTED)]

    def pick(self, name: str | None) -> AgentHandle:
        """The connected agent `name`, or the only one; ControlError saying who is there."""
        live = self.live()
        if name is None:
            if len(live) == 1:
                return live[0]
            names = ", ".join(sorted(a.name for a in live)) or "none"
            raise ControlError(f"say which client: connected agents are {names}")
        agent = self.agents.get(name)
        if agent is None or not agent.connected:
            names = ", ".join(sorted(a.name for a in live)) or "none"
            raise ControlError(f"no connected agent named {name!r} (connected: {names})")
        return agent


def _drop(mind: Any) -> None:
    """Close a mind's PB connection (a hung agent's session ends now, not at a TCP timeout)."""
    broker = getattr(mind, "broker", None)
    transport = getattr(broker, "transport", None)
    if transport is not None:
        abort = getattr(transport, "abortConnection", None) or transport.loseConnection
        abort()
