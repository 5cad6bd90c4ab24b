"""Orders: how many connections each worker of each agent holds, over which routes.

Orders for one agent run one at a time (a `DeferredLock` per agent), each from
the target the previous one left, so the console and `ctl` may overlap without
losing an update. The split itself is `plan`'s arithmetic; this module turns it
into `WorkerOrder`s and sends them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from connscale.records.packed import pack_pieces
from connscale.records.base import integer, seq
from connscale.config.settings import Config
from connscale.control import plan
from connscale.control.registry import AgentHandle, Registry
from connscale.host.sysctl import ephemeral_count
from connscale.net.routes import Route, make_routes
from connscale.procs.records import WorkerOrder

#: How long an agent may take to start the worker processes an order needs (a
#: dozen interpreters starting on a box busy with a ramp took over 10 s).
ENSURE_TIMEOUT = 120.0


class Orders:
    def __init__(self, clock: IReactorTime, cfg: Config, registry: Registry, note: Callable[[str], None]) -> None:
        self.clock = clock
        self.cfg = cfg
        self.registry = registry
        self.note = note

    # -- what an agent may use -------------------------------------------------------------
    def routes(self, agent: AgentHandle) -> list[Route]:
        """Every source IP of the agent × every port this hub serves.

        The hub is the server, so its own `server.ports` and interface are the
        truth; when it listens on all interfaces, agents dial the address at
        which they reached the controller. Source IPs are the agent's own
        (its --source-ip, or clients.NAME.source_ips when launched over ssh).
        """
        s, c = self.cfg.server, self.cfg.client
        info = agent.info
        if c.url is not None:
            # Someone else's server, named by the URL: every agent dials it there.
            return make_routes(c.server_host, c.server_ports, info.source_ips if info else (), 1)
        host = s.interface
        if ipaddress.ip_address(host).is_unspecified:
            host = (info.master_host if info else None) or "127.0.0.1"
        return make_routes(host, s.ports, info.source_ips if info else (), 1)

    def tuple_cap(self, agent: AgentHandle) -> int:
        ephemeral = agent.info.ephemeral if agent.info else 0
        return plan.tuple_cap(self.cfg.client.per_route_max, ephemeral or ephemeral_count())

    # -- orders ------------------------------------------------------------------------------
    def serial(self, agent: AgentHandle, order: Callable[[], defer.Deferred[int]]) -> defer.Deferred[int]:
        """Run `order` once the agent's previous orders are done.

        The result is a fresh Deferred that fires only with the final value, so
        the console shows it when it arrives instead of an intermediate chain.
        """
        result: defer.Deferred[int] = defer.Deferred()
        agent.lock.run(order).chainDeferred(result)
        return result

    @defer.inlineCallbacks
    def ensure_workers(self, agent: AgentHandle, total: int):
        """Have the agent run the workers `total` connections need; fires with their fd budgets."""
        info = agent.info
        assert info is not None, "orders go to registered agents only"
        budget = info.budget or 1
        # Workers for what the routes can carry, not for an order they cannot:
        # `start 1000000` on one route must not fork fifty processes.
        placeable = min(total, plan.capacity(self.routes(agent), self.tuple_cap(agent)))
        # An agent holds its connections in worker processes: at least one.
        workers = max(1, len(agent.worker_targets), plan.client_workers(placeable, budget, info.configured_workers))
        if workers > plan.MAX_WORKERS:
            self.note(f"agent {agent.name}: {workers} workers wanted, capped at {plan.MAX_WORKERS}")
            workers = max(len(agent.worker_targets), plan.MAX_WORKERS)
        # The agent checks the count against what `placeable` needs with its budget.
        # Starting a dozen worker processes on a box busy with a ramp can take a while.
        budgets = yield agent.call(self.clock, "ensure_workers", workers, placeable, timeout=ENSURE_TIMEOUT)
        # What the agent answers is checked like every payload: a list of budgets.
        return list(seq(integer(0, 1 << 30), 4 * plan.MAX_WORKERS)(budgets))

    def prepare(self, client: str | None, total: int) -> defer.Deferred[int]:
        """Start the workers `total` connections need, opening none; fires with how many run.

        A ramp asks for its final target's workers before its first step: an
        agent that started them step by step made every step wait for a dozen
        interpreters starting on a box already busy with the ramp (5-25 s each
        at a million). The orders that follow spread over every running worker.
        """
        try:
            agent = self.registry.pick(client)
        except Exception as e:
            return defer.fail(e)
        return self.serial(agent, lambda: self.ensure_workers(agent, total).addCallback(len))

    @defer.inlineCallbacks
    def set_target(self, agent: AgentHandle, total: int):
        info = agent.info
        assert info is not None, "orders go to registered agents only"
        routes = self.routes(agent)
        cap = self.tuple_cap(agent)
        budgets = yield self.ensure_workers(agent, total)
        assignments = plan.assign(total, budgets, routes, cap, agent.worker_targets)
        room = sum(min(plan.per_worker(b), sum(r.quota for r in q)) for b, (_, q) in zip(budgets, assignments))
        if total > room:
            self.note(
                f"agent {agent.name}: {total} connections exceed what its routes allow ({room}); "
                "add source IPs or server ports"
            )
        orders = [WorkerOrder(t, tuple(q)) for t, q in assignments]
        # Packed as JSON (records.packed): every order carries every route, ~940 KB
        # at a million, sent as pieces Banana accepts.
        yield agent.call(self.clock, "apply_packed", pack_pieces([o.to_wire() for o in orders]))
        agent.worker_targets = [o.target for o in orders]
        return agent.target

    def change(self, client: str | None, n: int, sign: int) -> defer.Deferred[int]:
        try:
            agent = self.registry.pick(client)
        except Exception as e:
            return defer.fail(e)
        return self.serial(agent, lambda: self.set_target(agent, max(0, agent.target + sign * n)))

    def restore(self, agent: AgentHandle) -> None:
        """Open again whatever was lost while the agent and the hub were apart."""
        if agent.connected and agent.target:
            self.serial(agent, lambda: self.set_target(agent, agent.target)).addErrback(
                lambda f: self.note(f"agent {agent.name}: restoring target {agent.target} failed: {f.getErrorMessage()}")
            )

    def set_rate(self, rate: float, client: str | None = None) -> defer.Deferred[None]:
        try:
            agents = [self.registry.pick(client)] if client else self.registry.live()
        except Exception as e:
            return defer.fail(e)
        for a in agents:
            a.rate = float(rate)
        return defer.gatherResults([a.call(self.clock, "set_rate", rate) for a in agents]).addCallback(lambda _: None)
