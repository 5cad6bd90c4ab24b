"""The controller: the hub's PB realm, and the one place that decides how many
connections each worker of each agent holds.

It is made of parts with one job each:

- `login` checks who logs in (`agent:<name>` with a mind that takes orders, or
  `operator`) and guards the connection before and after login;
- `registry` knows the agents, binds each name to one session and marks the
  silent ones lost;
- `orders` splits targets into per-worker orders and sends them, one at a time
  per agent;
- `collect` polls everyone once a second and keeps the numbers and the timeline.

This module wires them together, is the realm that hands out avatars, and
carries out the verbs of `verbs.VERBS` (every caller goes through `call`,
which checks the arguments first).
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.cred import error as cred_error
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from connscale.records.packed import pack_pieces
from connscale.records.base import Record, RecordError, loose
from connscale.config.settings import ClientHost, Config
from connscale.control import channel
from connscale.control.auth import Credentials, LoginExchange
from connscale.control.collect import LOST_AFTER, POLL_INTERVAL, Collector, EventLog
from connscale.control.diagnosis import Diagnosis
from connscale.control.errors import ControlError
from connscale.control.guard import MESSAGE_BYTES, ControlServerFactory
from connscale.control.login import LoginRoot, ProofChecker
from connscale.control.observers import Observers
from connscale.control.orders import Orders
from connscale.control.records import AgentInfo
from connscale.control.registry import CALL_TIMEOUT, AgentHandle, Registry
from connscale.control.throttle import LoginThrottle
from connscale.control.verbs import BY_NAME, VERBS, agent_name
from connscale.diagnose.fleetcheck import FleetCheck
from connscale.metrics.records import Stats
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.timeline import Timeline
from connscale.procs.supervisor import Supervisor

__all__ = ["CALL_TIMEOUT", "LOST_AFTER", "POLL_INTERVAL", "AgentHandle", "ControlError", "Controller"]

log = Logger(namespace="connscale.control")


class AgentAvatar(pb.Avatar):
    """What a logged-in agent may do: register (and prove the hub is still there)."""

    def __init__(self, controller: Controller, name: str, mind: pb.RemoteReference) -> None:
        self.controller = controller
        self.name = name
        self.mind = mind
        #: Registered as an observer (not an agent that holds connections).
        self.observer = False

    def perspective_register(self, info: object) -> dict[str, Any]:
        try:
            record = AgentInfo.from_wire(info)
        except RecordError as e:
            raise ControlError(f"registration refused: {e}") from None
        return self.controller.agent_registered(self.name, self.mind, record)

    def perspective_observe(self, info: object) -> dict[str, Any]:
        """An observer (`connscale observe`) registers: it watches a server, holds no connections."""
        try:
            record = AgentInfo.from_wire(info)
        except RecordError as e:
            raise ControlError(f"registration refused: {e}") from None
        self.observer = True
        return self.controller.observers.register(self.name, self.mind, record)

    def perspective_keepalive(self) -> None:
        """An agent's probe that the hub still answers."""
        return None

    def detached(self) -> None:
        if self.observer:
            self.controller.observers.detached(self.name, self.mind)
        else:
            self.controller.registry.detached(self.name, self.mind)


class OperatorAvatar(pb.Avatar):
    """What `connscale ctl` (and `connscale run`) may do: the verbs, checked by the controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def perspectiveMessageReceived(self, broker: Any, message: Any, args: Any, kw: Any) -> Any:
        args = broker.unserialize(args, self)
        kw = broker.unserialize(kw, self)
        name = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        if name == "keepalive":  # a long-lived operator link (connscale run) probing the hub
            return None
        if name == "stats_packed":
            # `stats` packed as JSON (records.packed), for callers that poll it every
            # second (connscale run, ctl watch, ctl stats): at a million connections its rows
            # cost PB ~0.2 s to encode and decode each time, the JSON string ~1 ms.
            result = self.controller.call("stats", args, kw).addCallback(pack_bounded)
            return broker.serialize(result, self, None, args, kw)
        return broker.serialize(self.controller.call(name, args, kw).addCallback(_plain), self, None, args, kw)


def _plain(answer: Any) -> Any:
    """A verb's answer as it crosses PB: a record as its wire form (`stats`), anything else as it is."""
    return answer.to_wire() if isinstance(answer, Record) else answer


#: An agent's manifest (diagnose.manifest): its fields are the host's, bounded like any agent's answer.
MANIFEST = loose(512, 4)

#: What `stats_packed` answers at most: below what a peer's guarded broker accepts in one message.
STATS_BYTES = MESSAGE_BYTES * 3 // 4


def pack_bounded(stats: Stats, limit: int = STATS_BYTES) -> list[str]:
    """`stats` packed, without the per-worker rows when they would make it larger than a peer
    accepts (`truncated` says so); never larger than `limit`."""
    pieces = pack_pieces(stats.to_wire())
    if sum(map(len, pieces)) <= limit:
        return pieces
    rowless = {name: attrs.evolve(row, workers=()) for name, row in stats.clients.items()}
    pieces = pack_pieces(attrs.evolve(stats, clients=rowless, truncated="worker rows left out: too large to send")
                         .to_wire())
    if sum(map(len, pieces)) <= limit:
        return pieces
    # Then every row whose count grows with the fleet or the watched servers: what is left is
    # the totals (a bare record, about 900 bytes).
    return pack_pieces(attrs.evolve(stats, clients={}, observers={}, target_events=(), server_workers=(),
                                    worker_losses=(), incidents=(),
                                    truncated="clients and observers left out: too large to send").to_wire())


@implementer(IRealm)
class Controller:
    def __init__(
        self,
        reactor: Any,
        cfg: Config,
        secret: bytes | Credentials,
        servers: Supervisor | None = None,
        timeline: Timeline | None = None,
        launcher: Callable[..., Any] | None = None,
        lost_after: float = LOST_AFTER,
        salt: bytes | None = None,
    ) -> None:
        self.reactor = reactor
        self.cfg = cfg
        self.credentials = secret if isinstance(secret, Credentials) else Credentials.from_secret(secret)
        #: This deployment's salt (`secret.hub_salt`: kept across restarts so agent keys stay good).
        self.salt = salt if salt is not None else LoginExchange.salt()
        self._tls: Any = None
        self.throttle = LoginThrottle(reactor)
        self.log = EventLog()
        self.registry = Registry(reactor, self.log.note)
        self.orders = Orders(reactor, cfg, self.registry, self.log.note)
        #: Names the walls the run meets (connscale.diagnose).
        self.diagnosis = Diagnosis(cfg, self.registry, self.log.note)
        self.collector = Collector(reactor, self.registry, self.log, servers, timeline, lost_after, self.diagnosis)
        self.collector.hosts = {name: host.host for name, host in cfg.clients.items()}
        #: Observers of the server under test (connscale observe), kept apart from the agents.
        self.observers = Observers(reactor, self.log.note, self.collector.started, lost_after)
        self.collector.observers = self.observers
        self._launcher = launcher

    # -- the parts, as the hub and the console see them ---------------------------------
    @property
    def agents(self) -> dict[str, AgentHandle]:
        return self.registry.agents

    @property
    def events(self) -> list[str]:
        """Events not yet written to the timeline."""
        return self.log.pending

    @property
    def servers(self) -> Supervisor | None:
        return self.collector.servers

    @property
    def timeline(self) -> Timeline | None:
        return self.collector.timeline

    @property
    def phase(self) -> str:
        return self.collector.phase

    def note(self, message: str) -> None:
        self.log.note(message)

    def portal(self) -> Portal:
        return Portal(self, [ProofChecker()])

    def login_root(self) -> LoginRoot:
        """The PB root of the control port: the login, then this realm."""
        return LoginRoot(self.portal(), self.credentials, self.salt)

    def server_factory(self, tls: bool = True) -> Any:
        """The control port's factory: login gate, guarded connections, throttled failures; behind
        TLS with a certificate of our own unless the endpoint does TLS itself (`ssl:`)."""
        factory = ControlServerFactory(self.login_root(), self.reactor, self.throttle)
        if not tls:
            return factory
        if self._tls is None:
            self._tls = channel.hub_options()
        return channel.wrap_server(factory, self._tls)

    def agent_line(self, name: str | None = None) -> bytes:
        """The secret-file line of an agent key for this hub (for agent `name` only, when given)."""
        return self.credentials.agent_line(self.salt, name)

    # -- realm -------------------------------------------------------------------------------
    def requestAvatar(self, avatarId: bytes | tuple[()], mind: Any,
                      *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        assert pb.IPerspective in interfaces
        assert isinstance(avatarId, bytes)  # ProofChecker, the portal's one checker, gives bytes
        kind, _, name = avatarId.decode("utf-8", "replace").partition(":")
        if kind == "agent":
            if mind is None:
                raise cred_error.UnauthorizedLogin("an agent login needs a mind to take orders")
            try:
                name = agent_name(name)
            except RecordError as e:
                raise cred_error.UnauthorizedLogin(f"agent name refused: {e}") from None
            avatar = AgentAvatar(self, name, mind)
            return pb.IPerspective, avatar, avatar.detached
        if kind == "operator" and not name:
            return pb.IPerspective, OperatorAvatar(self), lambda: None
        # (login.authenticate never gets here with another role: its key is unknown.)
        raise cred_error.UnauthorizedLogin(f"unknown role {kind[:40]!r}")

    # -- agents ------------------------------------------------------------------------------
    def agent_registered(self, name: str, mind: pb.RemoteReference, info: AgentInfo) -> dict[str, Any]:
        agent, answer = self.registry.register(name, mind, info)
        if agent.target:
            # Whatever was lost while we were apart (a hub restart takes the
            # server side down with it) is opened again, paced as usual.
            self.reactor.callLater(0, self.orders.restore, agent)
        return answer.to_wire()

    def wait_registered(self, name: str) -> defer.Deferred[None]:
        return self.registry.wait_registered(name)

    def registry_of(self, host: ClientHost) -> Registry:
        """Where a `clients:` entry registers: the observers' registry for one with `observe:`."""
        return self.observers.registry if host.observe else self.registry

    # -- verbs ---------------------------------------------------------------------------------
    def call(self, name: str, args: Any = (), kwargs: Any = None) -> defer.Deferred[Any]:
        """Carry out the verb `name`, its arguments checked first; fails with a ControlError."""
        verb = BY_NAME.get(name)
        if verb is None:
            known = ", ".join(v.name for v in VERBS)
            return defer.fail(ControlError(f"no verb named {name[:40]!r} (verbs: {known})"))
        try:
            values = verb.arguments(list(args or ()), dict(kwargs or {}))
        except ControlError as e:
            return defer.fail(e)
        return defer.maybeDeferred(getattr(self, f"op_{name}"), *values)

    def op_clients(self) -> list[dict[str, Any]]:
        return self.clients()

    def op_connections_start(self, n: int, client: str | None) -> defer.Deferred[int]:
        return self.orders.change(client, n, +1)

    def op_connections_stop(self, n: int, client: str | None) -> defer.Deferred[int]:
        return self.orders.change(client, n, -1)

    def op_prepare(self, n: int, client: str | None) -> defer.Deferred[int]:
        return self.orders.prepare(client, n)

    def op_count_connections(self, client: str | None) -> defer.Deferred[int]:
        if client is None:
            return self.collector.count()
        try:
            agent = self.registry.pick(client)
        except ControlError as e:
            return defer.fail(e)
        return self.collector.refresh(agent).addCallback(lambda _: agent.open())

    def op_stats(self) -> defer.Deferred[Stats]:
        return self.poll().addCallback(lambda _: self.stats())

    def op_set_rate(self, rate: float, client: str | None) -> defer.Deferred[None]:
        return self.orders.set_rate(rate, client)

    def op_check(self, target: int | None) -> FleetCheck:
        return self.diagnosis.fleet(target)

    def op_manifest(self, client: str) -> defer.Deferred[dict[str, Any]]:
        """Agent `client`'s host as its manifest says, checked like any agent's answer (bounded plain data)."""
        try:
            agent = self.registry.pick(client)
        except ControlError as e:
            return defer.fail(e)

        def checked(data: object) -> dict[str, Any]:
            try:
                value = MANIFEST(data)
            except RecordError as e:
                raise ControlError(f"agent {client}: its manifest does not fit: {e}") from None
            if not isinstance(value, dict):
                raise ControlError(f"agent {client}: its manifest is not a mapping")
            return value

        return agent.call(self.reactor, "manifest").addCallback(checked)

    def op_set_phase(self, phase: str) -> str:
        return self.collector.set_phase(phase)

    def op_agent_key(self, name: str | None) -> str:
        return self.agent_line(name).decode("ascii")

    def op_client_start(self, name: str) -> defer.Deferred[str]:
        """Start the agent `name` (from `clients:`) over ssh; fires once it registered."""
        if self._launcher is None:
            return defer.fail(ControlError("remote launch is not available in this process"))
        if name not in self.cfg.clients:
            known = ", ".join(sorted(self.cfg.clients)) or "none configured"
            return defer.fail(ControlError(f"no client {name!r} under clients: in the config (known: {known})"))
        agent = self.registry_of(self.cfg.clients[name]).agents.get(name)
        if agent is not None and agent.connected:
            return defer.fail(ControlError(f"client {name} is already running"))
        return self._launcher(self, self.cfg.clients[name])

    @defer.inlineCallbacks
    def op_client_stop(self, name: str):
        """Stop a client: its connections close, its agent (or observer) exits."""
        host = self.cfg.clients.get(name)
        agent = (self.registry_of(host) if host is not None else self.registry).agents.get(name)
        if agent is None:
            raise ControlError(f"no client named {name!r}")
        if agent.connected:
            try:
                yield agent.call(self.reactor, "shutdown")
            except Exception:
                pass  # the connection dropping as it exits is expected
        if agent.launch is not None:
            yield agent.launch.stop()
            agent.launch = None
        agent.worker_targets = []
        self.registry.release(name)
        self.note(f"client {name} stopped")

    # In-process callers (the hub, tests) use the verbs by name; they are checked too.
    def connections_start(self, n: Any, client: Any = None) -> defer.Deferred[int]:
        """Open n more connections on a client; fires with its new target."""
        return self.call("connections_start", (n, client))

    def connections_stop(self, n: Any, client: Any = None) -> defer.Deferred[int]:
        """Close n connections on a client (most loaded workers first); fires with its new target."""
        return self.call("connections_stop", (n, client))

    def count_connections(self, client: Any = None) -> defer.Deferred[int]:
        return self.call("count_connections", (client,))

    def set_rate(self, rate: Any, client: Any = None) -> defer.Deferred[None]:
        return self.call("set_rate", (rate, client))

    def client_start(self, name: Any) -> defer.Deferred[str]:
        return self.call("client_start", (name,))

    def client_stop(self, name: Any) -> defer.Deferred[None]:
        return self.call("client_stop", (name,))

    # -- numbers (collect) --------------------------------------------------------------------
    def poll(self) -> defer.Deferred[None]:
        return self.collector.poll()

    def tick(self) -> defer.Deferred[None]:
        return self.collector.tick()

    def stats(self, rtt: Any = None) -> Stats:
        return self.collector.stats(rtt)

    def clients(self) -> list[dict[str, Any]]:
        return self.collector.clients()

    def client_totals(self) -> Snapshot:
        return self.collector.client_totals()
