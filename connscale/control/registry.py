"""The agent registry: who is registered under which name, over which connection.

A name belongs to one live session at a time. A registration is answered with a
session token; a second login under a name that is still connected is refused
unless it presents that token (the same agent, reconnecting before the hub saw
its old connection die). Host and pid, which anyone may read from `clients()`,
prove nothing. A disconnected name is free again, and keeps the target the
operator gave it, so a restarted agent gets its load back.

An agent that stops answering is marked lost, with the reason, and its
connection is dropped: the next report decides, not a TCP timeout minutes later.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.spread import pb

from connscale.control.errors import ControlError
from connscale.control.records import AgentInfo, AgentReport, RegisterAnswer

#: A call to an agent that takes longer than this has failed.
CALL_TIMEOUT = 10.0


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

    @property
    def target(self) -> int:
        return sum(self.worker_targets)

    def open(self) -> int:
        return self.last.totals.open if self.last is not None else 0

    def call(self, clock: Any, method: str, *args: Any, timeout: float = CALL_TIMEOUT) -> defer.Deferred[Any]:
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
    def __init__(self, clock: Any, note: Callable[[str], None], kind: str = "agent") -> None:
        self.clock = clock
        self.note = note
        #: What its members are called in notes ("agent", "observer").
        self.kind = kind
        self.agents: dict[str, AgentHandle] = {}

    # -- sessions --------------------------------------------------------------------
    def register(self, name: str, mind: pb.RemoteReference, info: AgentInfo) -> tuple[AgentHandle, RegisterAnswer]:
        agent = self.agents.get(name)
        if agent is None:
            agent = self.agents[name] = AgentHandle(name)
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
        agent.lost_reason = ""
        agent.answered_at = self.clock.seconds()
        if not resumed:
            agent.session = secrets.token_hex(32)
        # An agent that outlived a hub restart (or a network cut) keeps its
        # workers and targets: adopt what it holds instead of resetting it.
        held = list(info.worker_targets)
        if sum(held) or not agent.worker_targets:
            agent.worker_targets = held
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
            agent = self.agents[name] = AgentHandle(name)
        d: defer.Deferred[None] = defer.Deferred()
        agent.registered.append(d)
        return d

    # -- lookups ---------------------------------------------------------------------------
    def live(self) -> list[AgentHandle]:
        return [a for a in self.agents.values() if a.connected]

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
