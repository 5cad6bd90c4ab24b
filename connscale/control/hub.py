"""The hub: `twistd connscale-server` with workers.

It supervises the server workers (each with its own SO_REUSEPORT listener on
every port), runs the controller on `control.listen`, the console, the
status line, and records the run's timeline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from connscale.config.endpoints import binds_loopback, dial_address, endpoint_parts
from connscale.config.settings import ClientHost, Config
from connscale.config.tls import ServerTLSSettings, TLSSetupError
from connscale.control import plan
from connscale.control.controller import POLL_INTERVAL, ControlError, Controller
from connscale.control.errors import StartError
from connscale.control.verbs import VERBS, Verb, describe
from connscale.control.auth import CredentialError, Credentials
from connscale.control.bounds import check_worker_memory
from connscale.control.secret import SecretError, config_dir, hub_salt, hub_secret
from connscale.deadline import unless_fired
from connscale.host.inventory import read_host_limits
from connscale.host.limits import prepare_fds
from connscale.host.resources import cpu_count
from connscale.metrics.render import render_stats
from connscale.metrics.status import StatusService
from connscale.metrics.timeline import Timeline
from connscale.net.listen import EndpointService, ListenError
from connscale.net.server import bind_sockets
from connscale.net.tlscert import make_auto
from connscale.procs.records import ServerSpec
from connscale.procs.supervisor import Supervisor

log = Logger(namespace="connscale.hub")

REGISTER_TIMEOUT = 60.0
#: `connscale run` hands its hub the values of clients.*.env here (JSON), not in a file.
CLIENTS_ENV = "CONNSCALE_CLIENTS_ENV"


def with_clients_env(cfg: Config, env: dict[str, str] | Any) -> Config:
    """`cfg` with the clients' environment values `connscale run` passed in CLIENTS_ENV (taken
    out of `env`: our own children have no use for them)."""
    import json

    import attrs

    text = env.pop(CLIENTS_ENV, None)
    if not text:
        return cfg
    try:
        given = json.loads(text)
        clients = {name: attrs.evolve(host, env={str(k): str(v) for k, v in given.get(name, host.env).items()})
                   for name, host in cfg.clients.items()}
    except (ValueError, AttributeError) as e:
        raise StartError(f"{CLIENTS_ENV}: not what connscale run writes ({e})") from None
    return attrs.evolve(cfg, clients=clients)


class HubService(MultiService):
    def __init__(self, reactor: Any, controller: Controller, servers: Supervisor | None, workers: int,
                 prog: str = "hub") -> None:
        super().__init__()
        self.reactor = reactor
        self.prog = prog  # what its log lines start with (the tap's program name)
        self.controller = controller
        self.servers = servers
        self.workers = workers
        self.status: StatusService | None = None
        #: Where a hub started on its own writes its summary as it stops (None: `connscale run`
        #: owns the run directory's summary).
        self.record_dir: Path | None = None
        #: When the hub started: its own record's duration.
        self.started_at = reactor.seconds()
        self._tick = LoopingCall(self._second)
        self._tick.clock = reactor

    def _second(self) -> None:
        """Start this second's timeline line, without making the loop wait for it: a
        LoopingCall skips the seconds a call overran, and a line that waits for a late
        answer and is then written could overrun one (control.collect.ANSWER_WAIT)."""
        self.controller.tick().addErrback(lambda f: log.failure("the timeline tick failed", f))

    def startService(self) -> None:
        super().startService()
        self._tick.start(POLL_INTERVAL, now=False)
        if self.servers is None:
            log.info("{prog}: no server of our own: the clients' target is client.url", prog=self.prog)
            return
        self.servers.ensure(self.workers).addCallbacks(
            lambda budgets: log.info(
                "{prog}: {n} server workers listening ({path}; fd budgets {budgets})",
                prog=self.prog, n=len(budgets), budgets=",".join(map(str, budgets)),
                path="fast path" if self.servers.spec.fast_path else "Twisted's transports",
            ),
            lambda f: log.error("{prog}: server workers failed to start: {why}", prog=self.prog, why=f.getErrorMessage()),
        )

    def stopService(self):
        # First of all: workers exiting from here on are being stopped, not lost.
        if self.servers is not None:
            self.servers.stopping = True
        if self._tick.running:
            self._tick.stop()
        d = defer.maybeDeferred(super().stopService)
        d.addCallback(lambda _: self.controller.tick())
        if self.servers is not None:
            d.addCallback(lambda _: self.servers.stop())
        if self.status is not None:
            d.addCallback(lambda _: self.status.tick())
        if self.controller.timeline is not None:
            d.addBoth(lambda r: (self.controller.timeline.close(), r)[1])
        if self.record_dir is not None:
            d.addBoth(lambda r: (self.write_summary(), r)[1])
        return d

    def write_summary(self) -> None:
        """A hub's own record, as it stops: summary.json beside its timeline (`kind` hub)."""
        import json

        from connscale.diagnose.fleet import hub_summary
        from connscale.diagnose.records import SUMMARY_FILE
        from connscale.metrics.timeline import TIMELINE_FILE, read_timeline

        assert self.record_dir is not None
        try:
            timeline = self.record_dir / TIMELINE_FILE
            records = list(read_timeline(timeline)) if timeline.exists() else []
            summary = hub_summary(records, str(self.record_dir), self.reactor.seconds() - self.started_at)
            path = self.record_dir / SUMMARY_FILE
            path.write_text(json.dumps(summary.to_wire(), indent=2, sort_keys=True) + "\n")
            log.info("{prog}: the hub's record: {path}", prog=self.prog, path=str(path))
        except Exception:
            # Stopping must not fail on it: the timeline is on disk whatever happens here.
            log.failure("{prog}: could not write the hub's summary", prog=self.prog)


def metrics_endpoint(endpoint: str) -> tuple[str, bool]:
    """(the endpoint to listen on, whether it is reachable beyond loopback).

    A tcp: endpoint without an interface means loopback here, not every
    interface as Twisted would have it: the numbers carry the run's
    addresses and no login protects them. Beyond loopback must be asked for
    (interface=0.0.0.0) and is warned about.
    """
    kind, positional, keywords = endpoint_parts(endpoint)
    if kind == "tcp" and "interface" not in keywords and len(positional) < 2:
        return f"{endpoint}:interface=127.0.0.1", False
    return endpoint, not binds_loopback(endpoint)


def serve_metrics(reactor: Any, controller: Controller, endpoint: str, prog: str = "hub") -> Service:
    """Prometheus /metrics from the timeline records, on `control.metrics_listen`."""
    from connscale.metrics.prometheus import TimelineCollector, metrics_site

    collector = TimelineCollector()
    controller.collector.listeners.append(collector.observe)
    endpoint, exposed = metrics_endpoint(endpoint)
    try:
        service = EndpointService(reactor, endpoint, metrics_site(collector), "control.metrics_listen",
                                  listen_now=True, label="metrics")
    except ListenError as e:
        raise StartError(str(e)) from None
    if exposed:
        # The numbers carry addresses of the run and no login protects them.
        log.warn("{prog}: control.metrics_listen {endpoint} is reachable beyond loopback and asks for no login",
                 prog=prog, endpoint=endpoint)
    log.info("{prog}: Prometheus metrics on {endpoint} at /metrics", prog=prog, endpoint=endpoint)
    return service


def control_address(cfg: Config) -> tuple[str, int]:
    address = dial_address(cfg.control.listen)
    if address is None:
        raise ControlError("remote agents need a tcp: or ssl: control.listen")
    return address


def launch_client(controller: Controller, host: ClientHost) -> defer.Deferred[str]:
    """`client_start`: run the agent over ssh, wait for it to register."""
    from connscale.control import launch

    reactor = controller.reactor
    master_host, master_port = host.master or control_address(controller.cfg)
    master = f"{master_host}:{master_port}"
    # An entry with `observe:` starts an observer of that server there, not an agent.
    argv = (launch.remote_observer_argv(host, master) if host.observe
            else launch.remote_agent_argv(host, master, launch.run_flags(controller.cfg.client)))
    registry = controller.registry_of(host)
    name = host.name

    def line(text: str) -> None:
        log.info("[{name}] {line}", name=name, line=text)

    # The remote agent (or observer) gets its own name's key, never the secret: it can log in
    # as that name and nothing more (no orders, no launches, no other name) if its host is taken.
    launched = launch.launch(reactor, host, argv, launch.stdin_for(host, controller.agent_line(name)), line)
    registered = registry.wait_registered(name)
    result: defer.Deferred[str] = defer.Deferred()

    def on_registered(_: Any) -> None:
        if not result.called:
            registry.agents[name].launch = launched
            controller.note(f"client {name} started on {host.host} over ssh")
            result.callback(name)

    def on_ended(code: int) -> None:
        if not result.called:
            result.errback(ControlError(launch.explain_failure(host, code, launched.stderr_tail)))
        elif registry.agents.get(name) and registry.agents[name].launch is launched:
            controller.note(f"client {name}: ssh session ended (exit {code})")

    def on_timeout() -> None:
        if not result.called:
            launched.stop()
            result.errback(ControlError(f"{name}: agent did not register within {REGISTER_TIMEOUT:g}s"))

    registered.addCallback(on_registered)
    launched.ended.addCallback(on_ended)
    return unless_fired(reactor, result, REGISTER_TIMEOUT, on_timeout)


def console_namespace(controller: Controller) -> dict[str, Any]:
    """The console's verbs: every verb of `verbs.VERBS`, checked by the controller.

    `stats()` prints the summary `connscale ctl stats` prints; `stats_raw()`
    answers the whole dict.
    """

    def make(verb: Verb) -> Callable[..., defer.Deferred[Any]]:
        def call(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            d = controller.call(verb.name, args, kwargs)
            return d.addCallback(render_stats) if verb.name == "stats" else d

        call.__name__ = call.__qualname__ = verb.name
        call.__doc__ = describe(verb)
        call.__signature__ = verb.python_signature()  # type: ignore[attr-defined]
        return call

    namespace: dict[str, Any] = {verb.name: make(verb) for verb in VERBS}
    # The other spelling of each verb (ctl's short name), where it is a Python name.
    namespace.update({verb.console_alias: namespace[verb.name] for verb in VERBS if verb.console_alias})

    def stats_raw() -> defer.Deferred[dict[str, Any]]:
        """stats_raw(): everything the controller knows, as a dict (the record's wire form)."""
        return controller.call("stats").addCallback(lambda stats: stats.to_wire())

    namespace["stats_raw"] = stats_raw
    return namespace


def state_dir() -> str:
    path = config_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(path)


def server_tls(tls: ServerTLSSettings, interface: str, directory: Path, prog: str = "hub") -> ServerTLSSettings:
    """`server.tls` as the server workers load it: `auto` made into files in `directory`
    (once, so every SO_REUSEPORT worker serves the same certificate), and tried here, so
    a certificate that cannot serve stops start-up with one line (StartError) instead of every worker."""
    if not tls.enabled:
        return tls
    if tls.cert is None:
        tls = make_auto(directory, interface)
        log.info("{prog}: server.tls: auto: a self-signed certificate for this hub in {cert} "
                 "(clients trust it with client.tls.ca_file)", prog=prog, cert=tls.cert)
    from connscale.net.tls import server_context

    try:
        server_context(tls)
    except TLSSetupError as e:
        raise StartError(str(e)) from None
    return tls


def make_hub(reactor: Any, cfg: Config, record_dir: str | None = None, prog: str = "hub",
             summary: bool = True) -> MultiService:
    """The hub's services; StartError (one line) when it cannot start. `summary`: it writes its
    manifest as it starts and its summary as it stops (a hub started on its own; `connscale run`
    writes both itself)."""
    import os

    cfg = with_clients_env(cfg, os.environ)
    s = cfg.server
    _, budget = prepare_fds(0, prog)
    # With client.url the clients speak to someone else's server: no server of ours.
    own_server = cfg.client.url is None
    try:
        # Bind once here so a port in use stops start-up with one line, before
        # any worker is spawned; the workers bind their own SO_REUSEPORT sockets.
        for sock in bind_sockets(s.interface, s.ports if own_server else (), s.backlog, reuse_port=True):
            sock.close()
    except ListenError as e:
        raise StartError(str(e)) from None
    try:
        secret, source = hub_secret(cfg.control)
        credentials = Credentials.from_secret(secret)
        if not credentials.whole_secret:
            raise SecretError("the hub's control secret is an agent key: a hub needs the secret itself")
    except (SecretError, CredentialError) as e:
        raise StartError(str(e)) from None
    workers = plan.server_workers(cfg.scenario.target, budget, cpu_count(), s.workers) if own_server else 0
    try:
        check_worker_memory(
            workers, read_host_limits().usable_memory, "the hub will not start",
            f" (server.workers is {s.workers}, scenario.target {cfg.scenario.target:,}: lower one of them)",
            noun="server workers",
        )
    except ControlError as e:
        raise StartError(str(e)) from None
    run_dir = Path(record_dir) if record_dir else Path(cfg.run.dir) / time.strftime("%Y%m%d-%H%M%S-hub")
    servers: Supervisor | None = None
    if own_server:
        spec = ServerSpec(interface=s.interface, ports=tuple(s.ports), backlog=s.backlog, framing=s.framing,
                          max_line=s.max_line, fast_path=cfg.net.fast_path,
                          tls=server_tls(s.tls, s.interface, run_dir / "tls", prog))
        servers = Supervisor(reactor, "server", spec, "hub")
    timeline = Timeline(run_dir)
    try:
        salt = hub_salt()
    except OSError as e:
        raise StartError(f"cannot keep the control salt in {config_dir()}: {e.strerror or e}") from None
    controller = Controller(reactor, cfg, credentials, servers, timeline, launcher=launch_client, salt=salt)
    hub = HubService(reactor, controller, servers, workers, prog)
    if summary:
        from connscale.diagnose.manifest import write_manifest

        hub.record_dir = run_dir
        try:
            write_manifest(run_dir, cfg.as_dict())
        except OSError as e:
            log.warn("{prog}: no manifest in {dir}: {why}", prog=prog, dir=str(run_dir), why=e.strerror or e)
    # Every control connection is TLS: ssl: with the configured certificate, any other
    # endpoint with one the hub makes now (control.channel).
    factory = controller.server_factory(tls=not cfg.control.listen.startswith("ssl:"))
    try:
        EndpointService(reactor, cfg.control.listen, factory, "control.listen",
                        listen_now=True, label="controller").setServiceParent(hub)
    except ListenError as e:
        raise StartError(str(e)) from None
    hub.status = StatusService(reactor, s.status_interval,
                               servers.totals if servers is not None else controller.collector.client_totals,
                               with_rtt=False, final=False)
    hub.status.setServiceParent(hub)
    if cfg.control.metrics_listen is not None:
        serve_metrics(reactor, controller, cfg.control.metrics_listen, prog).setServiceParent(hub)
    from connscale.control.console import ConsoleError, make_console

    try:
        console = make_console(reactor, cfg.control, console_namespace(controller), state_dir())
    except ConsoleError as e:
        raise StartError(str(e)) from None
    if console is not None:
        console.setServiceParent(hub)
    log.info(
        "{prog}: hub with {workers} server workers on {interface} ports {ports}; controller on {listen} "
        "(secret: {source}); timeline in {run_dir}",
        prog=prog, workers=workers, interface=s.interface, ports=",".join(map(str, s.ports)),
        listen=cfg.control.listen, source=source, run_dir=str(run_dir),
    )
    return hub
