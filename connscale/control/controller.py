"""The controller: realm and checker of the hub's PB service, and the one
place that decides how many connections each worker of each agent holds.

Logins are `agent:<name>` (an agent, whose PB *mind* takes orders) or
`operator` (the CLI); the password is the shared secret. Every second the
controller polls the server workers and every agent, merges their numbers
and appends them to the run's timeline.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Callable

import attrs
from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from zope.interface import implementer

from connscale.config.settings import Config
from connscale.control import plan
from connscale.host.kernel import kernel_snapshot
from connscale.host.sysctl import ephemeral_count
from connscale.metrics.histograms import RttAccumulator, encode_histogram, rtt_summary_ms
from connscale.metrics.phases import phase_name_ok, window_phase
from connscale.metrics.snapshot import Snapshot, sum_snapshots
from connscale.metrics.timeline import Timeline
from connscale.net.routes import make_routes
from connscale.procs.supervisor import Supervisor

log = Logger(namespace="connscale.control")

POLL_INTERVAL = 1.0
CALL_TIMEOUT = 10.0


class ControlError(pb.Error):
    """An error meant for the operator; crosses PB as its message."""


@attrs.define(eq=False)
class AgentHandle:
    name: str
    mind: pb.RemoteReference | None = None
    info: dict[str, Any] = attrs.Factory(dict)
    worker_targets: list[int] = attrs.Factory(list)
    last: dict[str, Any] = attrs.Factory(dict)
    connected: bool = False
    launch: Any = None  # launch.LaunchedAgent when started over ssh
    registered: list[defer.Deferred[None]] = attrs.Factory(list)
    lock: defer.DeferredLock = attrs.Factory(defer.DeferredLock)
    losses: int = 0  # times the agent's session dropped

    @property
    def target(self) -> int:
        return sum(self.worker_targets)

    def open(self) -> int:
        return int(self.last.get("totals", {}).get("open", 0))


class AgentAvatar(pb.Avatar):
    def __init__(self, controller: "Controller", name: str, mind: pb.RemoteReference) -> None:
        self.controller = controller
        self.name = name
        self.mind = mind

    def perspective_register(self, info: dict[str, Any]) -> dict[str, Any]:
        return self.controller.agent_registered(self.name, self.mind, info)


class OperatorAvatar(pb.Avatar):
    """What `connscale ctl` may do: the console's verbs over PB."""

    def __init__(self, controller: "Controller") -> None:
        self.c = controller

    def perspective_clients(self) -> list[dict[str, Any]]:
        return self.c.clients()

    def perspective_connections_start(self, n: int, client: str | None = None) -> defer.Deferred[int]:
        return self.c.connections_start(n, client)

    def perspective_connections_stop(self, n: int, client: str | None = None) -> defer.Deferred[int]:
        return self.c.connections_stop(n, client)

    def perspective_count_connections(self, client: str | None = None) -> defer.Deferred[int]:
        return self.c.count_connections(client)

    def perspective_stats(self) -> defer.Deferred[dict[str, Any]]:
        return self.c.poll().addCallback(lambda _: self.c.stats())

    def perspective_client_start(self, name: str) -> defer.Deferred[str]:
        return self.c.client_start(name)

    def perspective_client_stop(self, name: str) -> defer.Deferred[None]:
        return self.c.client_stop(name)

    def perspective_set_rate(self, rate: float, client: str | None = None) -> defer.Deferred[None]:
        return self.c.set_rate(rate, client)

    def perspective_set_phase(self, phase: str) -> str:
        return self.c.set_phase(phase)


@implementer(IRealm, ICredentialsChecker)
class Controller:
    # PB logins are challenge/response: the secret never crosses the wire.
    credentialInterfaces = (credentials.IUsernameHashedPassword,)

    def __init__(
        self,
        reactor: Any,
        cfg: Config,
        secret: bytes,
        servers: Supervisor | None = None,
        timeline: Timeline | None = None,
        launcher: Callable[..., Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.cfg = cfg
        self.secret = secret
        self.servers = servers
        self.timeline = timeline
        self.agents: dict[str, AgentHandle] = {}
        self.client_rtt = RttAccumulator()
        self.started = reactor.seconds()
        self.events: list[str] = []
        self._launcher = launcher
        self._poll_running: defer.Deferred[None] | None = None
        # What the driver of the run says it is doing (ramp:K, hold:K,
        # final_hold...), stamped on every timeline second so percentiles
        # can be taken per phase instead of over the whole run.
        self.phase = ""
        self._window_phases: list[str] = [""]

    def portal(self) -> Portal:
        return Portal(self, [self])

    # -- cred ------------------------------------------------------------------
    def requestAvatarId(self, creds: credentials.IUsernameHashedPassword) -> defer.Deferred[bytes]:
        if creds.checkPassword(self.secret):
            return defer.succeed(creds.username)
        return defer.fail(cred_error.UnauthorizedLogin("wrong control secret"))

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> tuple[Any, Any, Callable[[], None]]:
        assert pb.IPerspective in interfaces
        kind, _, name = avatarId.decode("utf-8", "replace").partition(":")
        if kind == "agent" and name and mind is not None:
            avatar = AgentAvatar(self, name, mind)
            return pb.IPerspective, avatar, lambda: self.agent_detached(name, mind)
        if kind == "operator":
            return pb.IPerspective, OperatorAvatar(self), lambda: None
        if kind == "agent":
            raise cred_error.UnauthorizedLogin("an agent login needs a name and a mind to take orders")
        raise cred_error.UnauthorizedLogin(f"unknown role {kind!r}")

    # -- agents ----------------------------------------------------------------
    def note(self, message: str) -> None:
        self.events.append(message)
        log.info("{message}", message=message)

    def agent_registered(self, name: str, mind: pb.RemoteReference, info: dict[str, Any]) -> dict[str, Any]:
        agent = self.agents.get(name)
        if agent is None:
            agent = self.agents[name] = AgentHandle(name)
        elif agent.connected and agent.mind is not mind:
            same = (agent.info.get("host"), agent.info.get("pid")) == (info.get("host"), info.get("pid"))
            if not same:
                # Two agents under one name would share one target and one
                # row of numbers: refuse the newcomer, loudly.
                raise ControlError(
                    f"agent name {name!r} is taken by pid {agent.info.get('pid')} on {agent.info.get('host')}; "
                    "give this agent another --name"
                )
            # The same process reconnecting before we noticed it had gone.
            self.note(f"agent {name} registered again; the older session is replaced")
        agent.mind = mind
        agent.info = dict(info)
        agent.connected = True
        # An agent that outlived a hub restart keeps its workers and targets:
        # adopt what it holds instead of resetting it.
        held = [int(t) for t in info.get("worker_targets", [])]
        if sum(held) or not agent.worker_targets:
            agent.worker_targets = held
        self.note(
            f"agent {name} registered from {info.get('host', '?')} (pid {info.get('pid', '?')}, "
            f"{info.get('workers', 0)} workers, target {agent.target})"
        )
        waiting, agent.registered = agent.registered, []
        for d in waiting:
            d.callback(None)
        if agent.target:
            # Whatever was lost while we were apart (a hub restart takes the
            # server side down with it) is opened again, paced as usual.
            self.reactor.callLater(0, self._restore, agent)
        return {"target": agent.target}

    @staticmethod
    def _serial(agent: AgentHandle, order: Callable[[], defer.Deferred[int]]) -> defer.Deferred[int]:
        """Run `order` once the agent's previous orders are done.

        The result is a fresh Deferred that fires only with the final value, so
        the console shows it when it arrives instead of an intermediate chain.
        """
        result: defer.Deferred[int] = defer.Deferred()
        agent.lock.run(order).chainDeferred(result)
        return result

    def _restore(self, agent: AgentHandle) -> None:
        if agent.connected:
            self._serial(agent, lambda: self.set_agent_target(agent, agent.target)).addErrback(
                lambda f: self.note(f"agent {agent.name}: restoring target {agent.target} failed: {f.getErrorMessage()}")
            )

    def agent_detached(self, name: str, mind: Any) -> None:
        agent = self.agents.get(name)
        if agent is None or agent.mind is not mind:
            return
        agent.connected = False
        agent.mind = None
        agent.losses += 1
        self.note(f"agent {name} disconnected; it held {agent.open()} connections at its last report")

    def wait_registered(self, name: str) -> defer.Deferred[None]:
        agent = self.agents.get(name)
        if agent is not None and agent.connected:
            return defer.succeed(None)
        if agent is None:
            agent = self.agents[name] = AgentHandle(name)
        d: defer.Deferred[None] = defer.Deferred()
        agent.registered.append(d)
        return d

    def _agent(self, name: str | None) -> AgentHandle:
        live = [a for a in self.agents.values() if a.connected]
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

    def _call(self, agent: AgentHandle, method: str, *args: Any) -> defer.Deferred[Any]:
        if agent.mind is None:
            return defer.fail(ControlError(f"agent {agent.name} is not connected"))
        d = agent.mind.callRemote(method, *args)
        d.addTimeout(CALL_TIMEOUT, self.reactor)
        return d

    # -- orders ------------------------------------------------------------------
    def _routes(self, agent: AgentHandle) -> list[Any]:
        """Every source IP of the agent × every port this hub serves.

        The hub is the server, so its own `server.ports` and interface are the
        truth; when it listens on all interfaces, agents dial the address at
        which they reached the controller. Source IPs are the agent's own
        (its --source-ip, or clients.NAME.source_ips when launched over ssh).
        """
        s = self.cfg.server
        host = s.interface
        if ipaddress.ip_address(host).is_unspecified:
            host = str(agent.info.get("master_host") or "127.0.0.1")
        return make_routes(host, s.ports, tuple(agent.info.get("source_ips", ())), 1)

    def _tuple_cap(self, agent: AgentHandle) -> int:
        ephemeral = int(agent.info.get("ephemeral", 0)) or ephemeral_count()
        return plan.tuple_cap(self.cfg.client.per_route_max, ephemeral)

    @defer.inlineCallbacks
    def set_agent_target(self, agent: AgentHandle, total: int):  # type: ignore[no-untyped-def]
        budget = int(agent.info.get("budget", 0)) or 1
        configured = agent.info.get("configured_workers", "auto")
        routes = self._routes(agent)
        cap = self._tuple_cap(agent)
        # Workers for what the routes can carry, not for an order they cannot:
        # `start 1000000` on one route must not fork fifty processes.
        placeable = min(total, plan.capacity(routes, cap))
        # An agent holds its connections in worker processes: at least one.
        workers = max(1, len(agent.worker_targets), plan.client_workers(placeable, budget, configured))
        if workers > plan.MAX_WORKERS:
            self.note(f"agent {agent.name}: {workers} workers wanted, capped at {plan.MAX_WORKERS}")
            workers = max(len(agent.worker_targets), plan.MAX_WORKERS)
        budgets = yield self._call(agent, "ensure_workers", workers)
        assignments = plan.assign(total, budgets, routes, cap, agent.worker_targets)
        room = sum(min(plan.per_worker(b), sum(r.quota for r in q)) for b, (_, q) in zip(budgets, assignments))
        if total > room:
            self.note(
                f"agent {agent.name}: {total} connections exceed what its routes allow ({room}); "
                "add source IPs or server ports"
            )
        rows = [(t, plan.route_rows(q)) for t, q in assignments]
        yield self._call(agent, "apply", rows)
        agent.worker_targets = [t for t, _ in assignments]
        return agent.target

    def connections_start(self, n: int, client: str | None = None) -> defer.Deferred[int]:
        """Open n more connections on a client; returns its new target."""
        return self._change(client, n, +1)

    def connections_stop(self, n: int, client: str | None = None) -> defer.Deferred[int]:
        """Close n connections on a client (most loaded workers first); returns its new target."""
        return self._change(client, n, -1)

    def _change(self, client: str | None, n: int, sign: int) -> defer.Deferred[int]:
        try:
            agent = self._agent(client)
            if int(n) < 0:
                raise ControlError("n must be >= 0")
        except ControlError as e:
            return defer.fail(e)
        # Orders for one agent run one at a time, each from the target the
        # previous one left (console and ctl may overlap).
        return self._serial(agent, lambda: self.set_agent_target(agent, max(0, agent.target + sign * int(n))))

    def set_rate(self, rate: float, client: str | None = None) -> defer.Deferred[None]:
        try:
            agents = [self._agent(client)] if client else [a for a in self.agents.values() if a.connected]
        except ControlError as e:
            return defer.fail(e)
        return defer.gatherResults([self._call(a, "set_rate", float(rate)) for a in agents]).addCallback(
            lambda _: None
        )

    def count_connections(self, client: str | None = None) -> defer.Deferred[int]:
        """Server-side count, or one client's established connections."""
        if client is not None:
            try:
                agent = self._agent(client)
            except ControlError as e:
                return defer.fail(e)
            return self._refresh(agent).addCallback(lambda _: agent.open())
        if self.servers is None:
            return defer.succeed(0)
        return self.servers.poll().addCallback(lambda _: self.servers.count())  # type: ignore[union-attr]

    # -- remote launch -------------------------------------------------------------
    def client_start(self, name: str) -> defer.Deferred[str]:
        """Start the agent `name` (from `clients:`) over ssh; fires once it registered."""
        if self._launcher is None:
            return defer.fail(ControlError("remote launch is not available in this process"))
        if name not in self.cfg.clients:
            known = ", ".join(sorted(self.cfg.clients)) or "none configured"
            return defer.fail(ControlError(f"no client {name!r} under clients: in the config (known: {known})"))
        agent = self.agents.get(name)
        if agent is not None and agent.connected:
            return defer.fail(ControlError(f"client {name} is already running"))
        return self._launcher(self, self.cfg.clients[name])

    @defer.inlineCallbacks
    def client_stop(self, name: str):  # type: ignore[no-untyped-def]
        """Stop a client: its connections close, its agent exits."""
        agent = self.agents.get(name)
        if agent is None:
            raise ControlError(f"no client named {name!r}")
        if agent.connected:
            try:
                yield self._call(agent, "shutdown")
            except Exception:
                pass  # the connection dropping as it exits is expected
        if agent.launch is not None:
            yield agent.launch.stop()
            agent.launch = None
        agent.worker_targets = []
        self.note(f"client {name} stopped")

    # -- statistics ------------------------------------------------------------------
    def _refresh(self, agent: AgentHandle) -> defer.Deferred[None]:
        def got(report: dict[str, Any]) -> None:
            agent.last = report
            if report.get("rtt"):
                self.client_rtt.add(report["rtt"])
            # A worker lost on an agent is an event of the run, in the timeline.
            for event in report.get("events", ()):
                self.note(f"agent {agent.name}: {event}")

        return self._call(agent, "report").addCallback(got).addErrback(lambda _: None)

    def poll(self) -> defer.Deferred[None]:
        """Refresh every source once; concurrent callers share one round."""
        if self._poll_running is not None:
            d: defer.Deferred[None] = defer.Deferred()
            self._poll_running.addBoth(lambda r: (d.callback(None), r)[1])
            return d
        calls = [self._refresh(a) for a in self.agents.values() if a.connected]
        if self.servers is not None:
            servers = self.servers
            calls.append(servers.poll().addCallback(lambda _: [self.note(e) for e in servers.take_events()]))
        running = defer.gatherResults(calls, consumeErrors=True).addErrback(lambda _: None)
        self._poll_running = running

        def done(_: Any) -> None:
            self._poll_running = None

        running.addBoth(done)
        return running

    def tick(self) -> defer.Deferred[None]:
        """One second of the timeline: poll, merge, record."""
        return self.poll().addCallback(lambda _: self._record())

    def set_phase(self, phase: str) -> str:
        """Name what the run does from now on; bounded and short, it becomes a label."""
        phase = str(phase)
        if not phase_name_ok(phase):
            raise ControlError(f"phase {phase!r}: use letters, digits, '_', ':' (at most 32 characters)")
        self.phase = phase
        self._window_phases.append(phase)
        return phase

    def _record(self) -> None:
        if self.timeline is None:
            self.events = []
            return
        window = self.client_rtt.take_window()
        record = self.stats(rtt=window)
        record["t"] = round(time.time(), 3)
        record["events"], self.events = self.events, []
        # The merged histogram of this second, so any percentile of any span
        # can be recomputed from the timeline alone.
        record["rtt_hist"] = encode_histogram(window) if window.get_total_count() else ""
        # A second that saw the phase change belongs to the ramp (or stop)
        # side of the change, so a hold's seconds never carry the head or the
        # tail of a connect burst or a drain.
        record["phase"] = window_phase(self._window_phases)
        self._window_phases = [self.phase]
        self.timeline.write(record)

    def client_totals(self) -> Snapshot:
        # A disconnected agent's last report is history, not connections held.
        return sum_snapshots(
            Snapshot.from_dict(a.last.get("totals", {})) for a in self.agents.values() if a.last and a.connected
        )

    def server_totals(self) -> Snapshot:
        return self.servers.totals() if self.servers is not None else Snapshot()

    def stats(self, rtt: Any = None) -> dict[str, Any]:
        server = self.server_totals()
        client = self.client_totals()
        out: dict[str, Any] = {
            "elapsed_s": round(self.reactor.seconds() - self.started, 3),
            "server": server.counts(),
            "client": client.counts(),
            "clients": {
                a.name: {
                    "connected": a.connected,
                    "target": a.target,
                    "open": a.open(),
                    "connecting": int(a.last.get("connecting", 0)),
                    "disconnects": a.losses,
                    "failures": a.last.get("totals", {}).get("failures", {}),
                    "workers": a.last.get("workers", []),
                }
                for a in self.agents.values()
            },
            "rtt_ms": rtt_summary_ms(self.client_rtt.total),
            # Connections a client believes open that no server holds: the
            # half-open "ghosts" of an overflowing accept queue.
            "ghosts": max(0, client.open - server.open),
            "workers": {
                "server": len(self.servers.slots) if self.servers is not None else 0,
                "client": sum(len(a.worker_targets) for a in self.agents.values()),
            },
            "server_workers": self.servers.workers() if self.servers is not None else [],
            "server_lost_workers": self.servers.lost_workers if self.servers is not None else 0,
            "kernel": kernel_snapshot(),
        }
        if rtt is not None:
            out["rtt_window_ms"] = rtt_summary_ms(rtt)
        return out

    def clients(self) -> list[dict[str, Any]]:
        """Every agent the controller knows, connected or not."""
        return [
            {
                "name": a.name,
                "connected": a.connected,
                "host": a.info.get("host"),
                "pid": a.info.get("pid"),
                "workers": len(a.worker_targets),
                "target": a.target,
                "open": a.open(),
                "launched": a.launch is not None,
            }
            for a in sorted(self.agents.values(), key=lambda a: a.name)
        ]
