"""The agent: supervises client workers and, with `--master`, takes orders
from the hub's controller over PB (logging in again after every reconnect).

Standalone (no master) the agent is its own controller: it asks `plan` for
the same split the hub's controller would make.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from connscale.config.records import RecordError, integer, nested, seq
from connscale.config.settings import Config
from connscale.control import dial, plan, verbs
from connscale.control.errors import ControlError
from connscale.control.records import AgentInfo, AgentReport
from connscale.control.secret import SecretError, client_secret
from connscale.host.inventory import read_host_limits
from connscale.host.limits import prepare_fds
from connscale.host.resources import cpu_count
from connscale.host.sysctl import ephemeral_count
from connscale.metrics.histograms import RttAccumulator, encode_histogram
from connscale.metrics.status import StatusService
from connscale.net.routes import make_routes
from connscale.procs.childproc import stop_reactor
from connscale.procs.records import ClientSpec, WorkerOrder
from connscale.procs.supervisor import Supervisor

log = Logger(namespace="connscale.agent")
PROG = "connscale-client"

#: Reconnect delays: each level is logged once, not every attempt.
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class AgentMind(pb.Referenceable):
    """What the controller may call on an agent; every argument is checked here."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def remote_ensure_workers(self, count: object) -> defer.Deferred[list[int]]:
        return self.agent.supervisor.ensure(_checked(integer(1, plan.MAX_WORKERS), count, "ensure_workers"))

    def remote_apply(self, rows: object) -> defer.Deferred[None]:
        orders = _checked(seq(nested(WorkerOrder), plan.MAX_WORKERS), rows, "apply")
        return self.agent.supervisor.apply(orders)

    def remote_report(self) -> defer.Deferred[dict[str, Any]]:
        # Fresh from the workers: a count right after an order should see it.
        return self.agent.supervisor.poll().addCallback(lambda _: self.agent.report().to_wire())

    def remote_set_rate(self, rate: object) -> defer.Deferred[Any]:
        return self.agent.supervisor.set_rate(_checked(verbs.rate, rate, "set_rate"))

    def remote_shutdown(self) -> None:
        log.info("{prog}: shutdown requested by the controller", prog=PROG)
        self.agent.reactor.callLater(0.1, stop_reactor, self.agent.reactor)


def _checked(parse: Any, value: object, what: str) -> Any:
    """An order's argument, or a refusal the controller sees as one line."""
    try:
        return parse(value)
    except RecordError as e:
        log.warn("{prog}: refused an order: {what}: {why}", prog=PROG, what=what, why=str(e))
        raise ControlError(f"agent refused {what}: {e}") from None


class Agent(MultiService):
    def __init__(self, reactor: Any, cfg: Config, standalone_workers: int | None = None) -> None:
        super().__init__()
        self.reactor = reactor
        self.cfg = cfg
        c = cfg.client
        self.name = c.name or socket.gethostname()
        self.standalone_workers = standalone_workers
        # Workers raise their own limits; this logs what each of them gets.
        _, self.budget = prepare_fds(0, PROG)
        spec = ClientSpec(interval=c.interval, timeout=c.timeout, rate=c.rate, framing=c.framing)
        self.report_rtt = RttAccumulator()
        self.supervisor = Supervisor(reactor, "client", spec, self.name, on_rtt=self.report_rtt.add)
        self.status = StatusService(reactor, c.status_interval, self.supervisor.totals, with_rtt=True, final=False)
        self.supervisor.rtt_listeners.append(self.status.rtt.add)
        self.status.setServiceParent(self)
        self._poll = LoopingCall(self.supervisor.poll)
        self._poll.clock = reactor
        self.link: ControllerLink | None = None
        if c.master is not None:
            try:
                secret = client_secret(cfg.control)
            except SecretError as e:
                raise SystemExit(f"{PROG}: {e}") from None
            self.link = ControllerLink(
                reactor, c.master, self.name, secret, AgentMind(self), self.info, cfg.control.tls_ca
            )
            self.link.setServiceParent(self)

    def info(self, session: str = "") -> AgentInfo:
        c = self.cfg.client
        return AgentInfo(
            host=socket.gethostname(),
            pid=os.getpid(),
            cores=cpu_count(),
            budget=self.budget,
            source_ips=tuple(c.source_ips),
            master_host=c.master[0] if c.master else None,
            ephemeral=ephemeral_count(),
            # Every limit of this host, so the hub's check and incidents cover it.
            limits=read_host_limits().to_dict(),
            rate=float(getattr(self.supervisor.spec, "rate", c.rate)),
            interval=c.interval,
            timeout=c.timeout,
            configured_workers=c.workers,
            workers=len(self.supervisor.slots),
            worker_targets=tuple(s.target for s in self.supervisor.slots),
            session=session,
        )

    def report(self) -> AgentReport:
        window = self.report_rtt.take_window()
        return AgentReport(
            totals=self.supervisor.totals(),
            rtt=encode_histogram(window) if window.get_total_count() else "",
            workers=tuple(self.supervisor.workers()),
            connecting=sum(int((s.last or {}).get("connecting", 0)) for s in self.supervisor.slots),
            events=tuple(self.supervisor.take_events()),
        )

    def startService(self) -> None:
        super().startService()
        self._poll.start(1.0, now=False)
        if self.standalone_workers:
            self._run_standalone(self.standalone_workers)

    @defer.inlineCallbacks
    def _run_standalone(self, workers: int):  # type: ignore[no-untyped-def]
        c = self.cfg.client
        budgets = yield self.supervisor.ensure(workers)
        routes = make_routes(c.server_host, c.server_ports, c.source_ips, 1)
        cap = plan.tuple_cap(c.per_route_max, ephemeral_count())
        assignments = plan.assign(c.connections, budgets, routes, cap)
        yield self.supervisor.apply([WorkerOrder(t, tuple(q)) for t, q in assignments])
        log.info(
            "{prog}: {n} connections over {w} workers ({split})",
            prog=PROG, n=c.connections, w=workers, split="+".join(str(t) for t, _ in assignments),
        )

    def stopService(self):  # type: ignore[no-untyped-def]
        # First of all: workers exiting from here on are being stopped, not lost.
        self.supervisor.stopping = True
        if self._poll.running:
            self._poll.stop()
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.supervisor.stop())
        d.addCallback(lambda _: self.status.tick())
        return d


class ControllerLink(Service):
    """Stay logged in to the controller; log in again after every reconnect."""

    def __init__(
        self,
        reactor: Any,
        master: tuple[str, int],
        name: str,
        secret: bytes,
        mind: pb.Referenceable,
        info: Any,
        tls_ca: str | None = None,
    ) -> None:
        self.tls_ca = tls_ca
        self.reactor = reactor
        self.master = master
        self.name = name
        self.secret = secret
        self.mind = mind
        self.info = info
        self.level = -1
        self.attempt = 0
        self.perspective: pb.RemoteReference | None = None
        self._retry: Any = None

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> None:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        host, port = self.master
        d = dial.login(self.reactor, host, port, f"agent:{self.name}", self.secret, self.tls_ca, mind=self.mind)
        d.addCallback(lambda result: self._logged_in(result[1]))
        d.addErrback(self._failed)

    @defer.inlineCallbacks
    def _logged_in(self, perspective: pb.RemoteReference):  # type: ignore[no-untyped-def]
        self.perspective = perspective
        perspective.notifyOnDisconnect(self._lost)
        try:
            answer = yield perspective.callRemote("register", self.info().to_wire())
        except Exception as e:
            message = (str(e).strip().splitlines() or [repr(e)])[-1]
            fatal(self.reactor, f"{PROG}: the controller refused our registration: {message}")
            return
        self.attempt = 0
        self.level = -1
        log.info(
            "{prog}: registered with controller {host}:{port} as {name} (target {target})",
            prog=PROG, host=self.master[0], port=self.master[1], name=self.name, target=answer.get("target"),
        )

    def _lost(self, _: Any) -> None:
        self.perspective = None
        if self.running:
            log.warn("{prog}: lost the controller; reconnecting", prog=PROG)
            self._schedule()

    def _failed(self, f: Failure) -> None:
        if dial.is_unauthorized(f.value):
            fatal(self.reactor, f"{PROG}: the controller refused our login: wrong control secret")
            return
        self._schedule(f)

    def _schedule(self, f: Failure | None = None) -> None:
        if not self.running:
            return
        level = min(self.attempt, len(BACKOFF) - 1)
        delay = BACKOFF[level]
        self.attempt += 1
        if f is not None and level != self.level:
            self.level = level
            log.warn(
                "{prog}: controller {host}:{port} unreachable ({why}); retrying every {delay:g}s",
                prog=PROG, host=self.master[0], port=self.master[1], why=f.getErrorMessage(), delay=delay,
            )
        self._retry = self.reactor.callLater(delay, self._connect)


def fatal(reactor: Any, message: str, code: int = 2) -> None:
    """Log one line and exit with `code` once the reactor has shut down."""
    log.critical("{message}", message=message)

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", leave)
    stop_reactor(reactor)


def make_agent(reactor: Any, cfg: Config, standalone_workers: int | None = None) -> Agent:
    return Agent(reactor, cfg, standalone_workers)
