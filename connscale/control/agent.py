"""The agent: supervises client workers and, with `--master`, takes orders
from the hub's controller over PB.

Its link to the hub is a `link.HubLink` (Twisted's ClientService): it logs in
again and registers after every reconnect, presenting the session token the
hub gave it so that it keeps its name, and a keepalive notices a hub that
stopped answering. Orders are checked against `bounds.OrderBounds` before they
reach a worker. A hub gone for longer than `client.hub_grace` seconds takes
the load with it: the agent closes its connections (keeping its workers) and
waits for a hub to give orders again.

Standalone (no master) the agent is its own controller: it asks `plan` for
the same split the hub's controller would make.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import MutableMapping
from typing import Any

import attrs

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.spread import pb

from connscale.records.packed import PackError, pack_pieces, unpack
from connscale.records.base import RecordError, integer, nested, seq
from connscale.config.settings import Config
from connscale.control import plan, verbs
from connscale.control.auth import CredentialError, Credentials
from connscale.control.bounds import OrderBounds
from connscale.control.errors import ControlError, StartError
from connscale.control.link import HubLink
from connscale.control.records import MAX_EVENTS, AgentInfo, AgentReport, RegisterAnswer
from connscale.control.secret import SecretError, client_secret, config_dir
from connscale.host.inventory import read_host_limits
from connscale.host.limits import prepare_fds
from connscale.host.resources import cpu_count, process_resources
from connscale.host.sysctl import ephemeral_count
from connscale.metrics.histograms import RttAccumulator, encode_histogram
from connscale.metrics.status import StatusService
from connscale.net.routes import make_routes
from connscale.procs.child import PASSWORD_VARIABLE
from connscale.procs.childproc import stop_reactor
from connscale.procs.records import MAX_LOSSES, ClientSpec, WorkerOrder
from connscale.procs.supervisor import Supervisor

log = Logger(namespace="connscale.agent")
#: How long a report waits for the workers' answers: well inside the hub's own
#: wait for the agents (control.collect.ANSWER_WAIT), so one slow worker does
#: not make the agent late.
REPORT_WAIT = 0.4

class AgentMind(pb.Referenceable):
    """What the controller may call on an agent; every argument is checked here."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def remote_ensure_workers(self, count: object, target: object = None) -> defer.Deferred[list[int]]:
        # The target is required: the workers it needs are what bounds them (a hub that
        # left it out could otherwise make us start up to plan.MAX_WORKERS).
        n = self._checked(integer(1, plan.MAX_WORKERS), count, "ensure_workers")
        if target is None:
            raise ControlError("agent refused ensure_workers: the target the workers are for is required")
        wanted = self._checked(integer(0, 1 << 40), target, "ensure_workers")
        self.agent.bounds.workers(n, wanted, len(self.agent.supervisor.slots))
        return self.agent.supervisor.ensure(n)

    def remote_apply_packed(self, text: object) -> defer.Deferred[None]:
        """The workers' orders, packed (records.packed): 53 workers' orders with 640
        routes each are ~135,000 PB elements, seconds of work to decode, and ~940 KB
        of JSON, which Banana only carries in pieces (a list of strings; one string
        from a hub that packed it whole is accepted too)."""
        try:
            rows = unpack(text)
        except PackError as e:
            raise ControlError(f"agent refused apply: {e}") from None
        orders = self._checked(seq(nested(WorkerOrder), plan.MAX_WORKERS), rows, "apply")
        self.agent.bounds.orders(orders, [s.budget for s in self.agent.supervisor.slots])
        self.agent.obeyed()
        return self.agent.supervisor.apply(orders)

    def remote_report_packed(self) -> defer.Deferred[list[str]]:
        """Our report, packed (records.packed). Fresh from the workers (a count right after an
        order should see it), but never later than REPORT_WAIT: a slow worker counts with its
        last snapshot (its row's silent_s says how old) rather than making this whole agent
        late for the hub's second."""
        return self.agent.supervisor.poll(REPORT_WAIT).addCallback(
            lambda _: pack_pieces(self.agent.report().to_wire()))

    def remote_set_rate(self, rate: object) -> defer.Deferred[Any]:
        return self.agent.supervisor.set_rate(self._checked(verbs.rate, rate, "set_rate"))

    def remote_manifest(self) -> dict[str, Any]:
        """This host as a run's manifest describes it (kernel, limits, sysctls, versions); no config:
        the hub has the run's."""
        from connscale.diagnose.manifest import collect_manifest

        return collect_manifest(None)

    def remote_shutdown(self) -> None:
        log.info("{prog}: shutdown requested by the controller", prog=self.agent.prog)
        self.agent.reactor.callLater(0.1, stop_reactor, self.agent.reactor)

    def _checked(self, parse: Any, value: object, what: str) -> Any:
        """An order's argument, or a refusal the controller sees as one line."""
        try:
            return parse(value)
        except RecordError as e:
            log.warn("{prog}: refused an order: {what}: {why}", prog=self.agent.prog, what=what, why=str(e))
            raise ControlError(f"agent refused {what}: {e}") from None


class Agent(MultiService):
    # Twisted's Service says `name = None`, unannotated, so mypy types it None (IService: str or None).
    name: str  # type: ignore[assignment]

    def __init__(self, reactor: Any, cfg: Config, standalone_workers: int | None = None,
                 prog: str = "agent") -> None:
        """StartError (one line) when it cannot log in as configured."""
        super().__init__()
        self.reactor = reactor
        self.prog = prog  # what its log lines start with (the tap's program name)
        self.cfg = cfg
        c = cfg.client
        self.name = c.name or socket.gethostname()
        self.standalone_workers = standalone_workers
        # Workers raise their own limits; this logs what each of them gets.
        _, self.budget = prepare_fds(0, prog)
        spec = ClientSpec(interval=c.interval, timeout=c.timeout, rate=c.rate, framing=c.framing, close=c.close,
                          profile=c.profile_options(), tls=c.tls, fast_path=cfg.net.fast_path)
        self.report_rtt = RttAccumulator()
        self.supervisor = Supervisor(reactor, "client", spec, self.name, on_rtt=self.report_rtt.add)
        # TLS handshake times travel like RTTs: merged here, sent up as one histogram per report.
        self.report_handshake = RttAccumulator(keep_total=False)
        self.supervisor.handshake_listeners.append(self.report_handshake.add)
        self.status = StatusService(reactor, c.status_interval, self.supervisor.totals, with_rtt=True, final=False)
        self.supervisor.rtt_listeners.append(self.status.rtt.add)
        self.status.setServiceParent(self)
        self._poll = LoopingCall(self._poll_unless_asked)
        self._poll.clock = reactor
        destinations = [c.server_host] + ([c.master[0]] if c.master else [])
        self.bounds = OrderBounds(self.budget, c.workers, c.source_ips, destinations,
                                  memory=lambda: read_host_limits().usable_memory)
        #: The session token the hub gave us: presented again after a reconnect, and kept in
        #: a file of ours so that a restarted agent keeps its name (registry.NAME_HOLD).
        self.session_file = config_dir() / f"agent-{self.name}.session"
        self.session = read_session(self.session_file)
        self.registered = 0
        self._orphaned: Any = None
        self.link: HubLink | None = None
        if c.master is not None:
            credentials = agent_credentials(cfg, self.name, "client.name")
            self.link = HubLink(
                reactor, c.master, f"agent:{self.name}", credentials, tls_ca=cfg.control.tls_ca,
                mind=AgentMind(self), on_login=self._register, on_lost=self._hub_lost, on_refused=self._refused,
            )
            self.link.setServiceParent(self)

    # -- the hub ------------------------------------------------------------------------
    @defer.inlineCallbacks
    def _register(self, perspective: pb.RemoteReference):
        answer = RegisterAnswer.from_wire((yield perspective.callRemote("register", self.info(self.session).to_wire())))
        if answer.session != self.session:
            self.session = answer.session
            keep_session(self.session_file, self.session, self.prog)
        self.registered += 1
        self.obeyed()
        assert self.cfg.client.master is not None
        host, port = self.cfg.client.master
        log.info("{prog}: registered with controller {host}:{port} as {name} (target {target})",
                 prog=self.prog, host=host, port=port, name=self.name, target=answer.target)

    def obeyed(self) -> None:
        """A hub is giving orders: whatever grace period was running is over."""
        if self._orphaned is not None and self._orphaned.active():
            self._orphaned.cancel()
        self._orphaned = None

    def _hub_lost(self, why: str) -> None:
        grace = self.cfg.client.hub_grace
        if self._orphaned is None and self.supervisor.slots:
            log.warn("{prog}: the hub is gone; holding our connections for {grace:g} s while it comes back",
                     prog=self.prog, grace=grace)
            self._orphaned = self.reactor.callLater(grace, self._orphan)

    def _orphan(self) -> None:
        """No hub for the whole grace period: stop the load, keep the workers, wait for orders."""
        self._orphaned = None
        held = sum(s.target for s in self.supervisor.slots)
        log.warn("{prog}: no hub for {grace:g} s: closing our {n} connections until a hub gives orders again",
                 prog=self.prog, grace=self.cfg.client.hub_grace, n=held)
        self.supervisor.events.append(f"no hub for {self.cfg.client.hub_grace:g} s: load stopped ({held} connections)")
        self.supervisor.apply([WorkerOrder(0, s.routes) for s in self.supervisor.slots]).addErrback(
            lambda f: log.failure("stopping the load failed", f))

    def _refused(self, message: str) -> None:
        from connscale.control.secret import secret_origin

        fatal(self.reactor, f"{self.prog}: {message} (our secret came from {secret_origin(self.cfg.control)})")

    # -- what we say ---------------------------------------------------------------------
    def _poll_unless_asked(self) -> None:
        """Our own once-a-second poll (for the status line, and standalone), unless a
        hub's report has just asked the workers: one snapshot per worker per second.

        Not waited for (the LoopingCall would skip the seconds a slow worker
        held it up); the supervisor asks each worker one question at a time."""
        if self.reactor.seconds() - self.supervisor.polled_at < 0.9:
            return
        self.supervisor.poll().addErrback(lambda f: log.failure("polling the workers failed", f))

    def info(self, session: str = "") -> AgentInfo:
        c = self.cfg.client
        limits = read_host_limits()
        return AgentInfo(
            host=socket.gethostname()[:255],
            pid=os.getpid(),
            cores=cpu_count(),
            budget=self.budget,
            source_ips=tuple(c.source_ips),
            master_host=c.master[0] if c.master else None,
            ephemeral=ephemeral_count(),
            # Every limit of this host, so the hub's check and incidents cover it.
            limits=limits.to_dict(),
            rate=float(getattr(self.supervisor.spec, "rate", c.rate)),
            interval=c.interval,
            timeout=c.timeout,
            configured_workers=c.workers,
            memory=limits.usable_memory or 0,
            workers=len(self.supervisor.slots),
            worker_targets=tuple(s.target for s in self.supervisor.slots),
            session=session,
        )

    def report(self) -> AgentReport:
        window = self.report_rtt.take_window()
        handshakes = self.report_handshake.take_window()
        return AgentReport(
            totals=self.supervisor.totals(),
            rtt=encode_histogram(window) if window.get_total_count() else "",
            handshake=encode_histogram(handshakes) if handshakes.get_total_count() else "",
            workers=tuple(self.supervisor.workers()),
            connecting=sum(int((s.last or {}).get("connecting", 0)) for s in self.supervisor.slots),
            events=report_events(self.supervisor.take_events()),
            losses=tuple(self.supervisor.take_losses())[:MAX_LOSSES],
            resources=process_resources(),
        )

    def startService(self) -> None:
        super().startService()
        self._poll.start(1.0, now=False)
        if self.standalone_workers:
            self._run_standalone(self.standalone_workers)

    @defer.inlineCallbacks
    def _run_standalone(self, workers: int):
        c = self.cfg.client
        budgets = yield self.supervisor.ensure(workers)
        routes = make_routes(c.server_host, c.server_ports, c.source_ips, 1)
        cap = plan.tuple_cap(c.per_route_max, ephemeral_count())
        assignments = plan.assign(c.connections, budgets, routes, cap)
        yield self.supervisor.apply([WorkerOrder(t, tuple(q)) for t, q in assignments])
        log.info(
            "{prog}: {n} connections over {w} workers ({split})",
            prog=self.prog, n=c.connections, w=workers, split="+".join(str(t) for t, _ in assignments),
        )

    def stopService(self):
        # First of all: workers exiting from here on are being stopped, not lost.
        self.supervisor.stopping = True
        self.obeyed()
        if self._poll.running:
            self._poll.stop()
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.supervisor.stop())
        d.addCallback(lambda _: self.status.tick())
        return d


def read_session(path: Any) -> str:
    """The session token a previous run of this agent kept ("" if none, not one, or kept by an
    agent of this name that is still running: two agents under one name stay two)."""
    try:
        token, _, pid = path.read_text().strip().partition(" ")
    except (OSError, UnicodeDecodeError):
        return ""
    if len(token) != 64 or any(c not in "0123456789abcdef" for c in token):
        return ""
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
            return ""  # its writer lives: not ours
        except ProcessLookupError:
            pass
        except OSError:
            return ""
    return token


def keep_session(path: Any, token: str, prog: str = "agent") -> None:
    """Keep the token for a restarted agent (ours alone: it is what proves the name is ours)."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{token} {os.getpid()}\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warn("{prog}: cannot keep our session in {path} ({why}): a restart of this agent waits "
                 "for its name", prog=prog, path=str(path), why=e.strerror or e)


def report_events(events: list[str]) -> tuple[str, ...]:
    """Events as a report carries them: at most MAX_EVENTS printable lines (the rest counted)."""
    lines = ["".join(c if c.isprintable() else " " for c in e)[:300] for e in events]
    if len(lines) > MAX_EVENTS:
        lines = lines[: MAX_EVENTS - 1] + [f"... and {len(lines) - MAX_EVENTS + 1} more events"]
    return tuple(lines)


def agent_credentials(cfg: Config, name: str, what: str) -> Credentials:
    """The agent login's credentials (agents and observers), or StartError with one line: no
    secret, a key that cannot log in as this agent name, or a name (`what`) the hub would refuse."""
    try:
        verbs.agent_name(name)
        credentials = Credentials.from_secret(client_secret(cfg.control))
        credentials.check_role(f"agent:{name}")
    except (SecretError, CredentialError) as e:
        raise StartError(str(e)) from None
    except RecordError as e:
        raise StartError(f"{what} {name!r}: {e}") from None
    return credentials


def fatal(reactor: Any, message: str, code: int = 2) -> None:
    """Log one line and exit with `code` once the reactor has shut down."""
    log.critical("{message}", message=message)

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", leave)
    stop_reactor(reactor)


def make_agent(reactor: Any, cfg: Config, standalone_workers: int | None = None,
               environ: MutableMapping[str, str] | None = None, prog: str = "agent") -> Agent:
    """The agent of `cfg`; the target's password, when `connscale run` started us, is in our
    environment (its config.yaml has it redacted): taken out of it, for our workers alone."""
    password = (os.environ if environ is None else environ).pop(PASSWORD_VARIABLE, None)
    if password is not None:
        cfg = attrs.evolve(cfg, client=attrs.evolve(cfg.client, password=password))
    return Agent(reactor, cfg, standalone_workers, prog)
