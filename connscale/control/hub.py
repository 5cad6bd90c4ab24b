"""The hub: `twistd connscale-server` with workers.

It supervises the server workers (each with its own SO_REUSEPORT listener on
every port), runs the controller on `control.listen`, the console, the
status line, and records the run's timeline.

This module is the service and its start-up (`make_hub`, one named step per
check); the rooms it starts have their own: /metrics in `metrics_listen`, the
ssh launch of `clients:` entries in `ssh_start`, the console's namespace in
`hub_console`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from connscale.config.settings import Config, ControlSettings, ServerSettings
from connscale.config.tls import ServerTLSSettings, TLSSetupError
from connscale.control import plan
from connscale.control.auth import CredentialError, Credentials
from connscale.control.bounds import check_worker_memory
from connscale.control.controller import POLL_INTERVAL, ControlError, Controller
from connscale.control.errors import StartError
from connscale.control.hub_console import hub_console
from connscale.control.metrics_listen import serve_metrics
from connscale.control.secret import SecretError, config_dir, hub_salt, hub_secret
from connscale.control.ssh_start import launch_client
from connscale.host.inventory import read_host_limits
from connscale.host.limits import prepare_fds
from connscale.host.resources import cpu_count
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
    _, budget = prepare_fds(0, prog)
    # With client.url the clients speak to someone else's server: no server of ours.
    own_server = cfg.client.url is None
    check_ports(cfg.server, own_server)
    credentials, source = hub_credentials(cfg.control)
    workers = server_workers(cfg, budget) if own_server else 0
    run_dir = Path(record_dir) if record_dir else Path(cfg.run.dir) / time.strftime("%Y%m%d-%H%M%S-hub")
    servers = server_supervisor(reactor, cfg, run_dir, prog) if own_server else None
    controller = Controller(reactor, cfg, credentials, servers, Timeline(run_dir), launcher=launch_client,
                            salt=control_salt())
    hub = HubService(reactor, controller, servers, workers, prog)
    if summary:
        keep_record(hub, run_dir, cfg, prog)
    add_services(hub, cfg)
    log.info(
        "{prog}: hub with {workers} server workers on {interface} ports {ports}; controller on {listen} "
        "(secret: {source}); timeline in {run_dir}",
        prog=prog, workers=workers, interface=cfg.server.interface, ports=",".join(map(str, cfg.server.ports)),
        listen=cfg.control.listen, source=source, run_dir=str(run_dir),
    )
    return hub


def check_ports(s: ServerSettings, own_server: bool) -> None:
    """Bind once here so a port in use stops start-up with one line, before any worker is
    spawned; the workers bind their own SO_REUSEPORT sockets."""
    try:
        for sock in bind_sockets(s.interface, s.ports if own_server else (), s.backlog, reuse_port=True):
            sock.close()
    except ListenError as e:
        raise StartError(str(e)) from None


def hub_credentials(control: ControlSettings) -> tuple[Credentials, str]:
    """The hub's credentials and where its secret came from; a hub needs the secret itself."""
    try:
        secret, source = hub_secret(control)
        credentials = Credentials.from_secret(secret)
        if not credentials.whole_secret:
            raise SecretError("the hub's control secret is an agent key: a hub needs the secret itself")
    except (SecretError, CredentialError) as e:
        raise StartError(str(e)) from None
    return credentials, source


def server_workers(cfg: Config, budget: int) -> int:
    """How many server workers the hub runs, refused when the host's memory cannot hold them."""
    s = cfg.server
    workers = plan.server_workers(cfg.scenario.target, budget, cpu_count(), s.workers)
    try:
        check_worker_memory(
            workers, read_host_limits().usable_memory, "the hub will not start",
            f" (server.workers is {s.workers}, scenario.target {cfg.scenario.target:,}: lower one of them)",
            noun="server workers",
        )
    except ControlError as e:
        raise StartError(str(e)) from None
    return workers


def server_supervisor(reactor: Any, cfg: Config, run_dir: Path, prog: str) -> Supervisor:
    """The supervisor of the hub's own server workers (their TLS made in the run directory)."""
    s = cfg.server
    spec = ServerSpec(interface=s.interface, ports=tuple(s.ports), backlog=s.backlog, framing=s.framing,
                      max_line=s.max_line, fast_path=cfg.net.fast_path,
                      tls=server_tls(s.tls, s.interface, run_dir / "tls", prog))
    return Supervisor(reactor, "server", spec, "hub")


def control_salt() -> bytes:
    try:
        return hub_salt()
    except OSError as e:
        raise StartError(f"cannot keep the control salt in {config_dir()}: {e.strerror or e}") from None


def keep_record(hub: HubService, run_dir: Path, cfg: Config, prog: str) -> None:
    """A hub started on its own: its manifest now, its summary as it stops."""
    from connscale.diagnose.manifest import write_manifest

    hub.record_dir = run_dir
    try:
        write_manifest(run_dir, cfg.as_dict())
    except OSError as e:
        log.warn("{prog}: no manifest in {dir}: {why}", prog=prog, dir=str(run_dir), why=e.strerror or e)


def add_services(hub: HubService, cfg: Config) -> None:
    """The controller's port, the status line, /metrics and the console, each under the hub."""
    reactor, controller, servers = hub.reactor, hub.controller, hub.servers
    # Every control connection is TLS: ssl: with the configured certificate, any other
    # endpoint with one the hub makes now (control.channel).
    factory = controller.server_factory(tls=not cfg.control.listen.startswith("ssl:"))
    try:
        EndpointService(reactor, cfg.control.listen, factory, "control.listen",
                        listen_now=True, label="controller").setServiceParent(hub)
    except ListenError as e:
        raise StartError(str(e)) from None
    hub.status = StatusService(reactor, cfg.server.status_interval,
                               servers.totals if servers is not None else controller.collector.client_totals,
                               with_rtt=False, final=False)
    hub.status.setServiceParent(hub)
    if cfg.control.metrics_listen is not None:
        serve_metrics(reactor, controller, cfg.control.metrics_listen, hub.prog).setServiceParent(hub)
    console = hub_console(reactor, cfg.control, controller)
    if console is not None:
        console.setServiceParent(hub)
