"""`twistd connscale-client`: hold N pinging connections, alone or as an agent."""

from __future__ import annotations

from twisted.application.service import IService, MultiService, Service
from twisted.logger import Logger

from connscale.app.startup import ConfigOptions, repeat_option, startup_errors
from connscale.config.tls import TLSSetupError
from connscale.control import plan
from connscale.host.limits import prepare_fds
from connscale.host.sysctl import ephemeral_count
from connscale.metrics.status import StatusService
from connscale.net.dispatch import direct_dispatch
from connscale.net.pool import ConnectionPool, PoolSettings
from connscale.net.profiles import ProfileError
from connscale.net.routes import make_routes

log = Logger(namespace="connscale.client")
PROG = "connscale-client"


class Options(ConfigOptions):
    synopsis = "[--config FILE] --server HOST:PORT [--connections N] [options]"
    longdesc = (
        "Open N connections to a connscale server at a paced rate; each sends Ping every interval "
        "and fails with no_answer_from_server when Pong is late. With --master, register with a "
        "hub's controller and take orders from it instead."
    )
    optParameters = ConfigOptions.optParameters + [
        ["server", "s", None, "Server HOST:PORT; PORT may be a list or range 8989-8992 [client.server]."],
        ["connections", "n", None, "Connections to hold [client.connections, default 1000]."],
        ["rate", "r", None, "Connects per second [client.rate, default 2000]."],
        ["interval", None, None, "Seconds between pings of a connection [client.interval, default 5]."],
        ["timeout", "t", None, "Seconds to wait for Pong [client.timeout, default 1]."],
        ["framing", None, None, "line or raw [client.framing, default line]."],
        ["url", "u", None, "The target as a URL: redis://HOST:PORT, http(s)://HOST:PORT/PATH, ws(s)://, "
         "mqtt(s)://, tcp://HOST:PORT-PORT, raw://, tls:// [client.url]."],
        ["protocol", None, None, "line, raw, redis, http, websocket, mqtt or custom [client.protocol]."],
        ["workers", "w", None, "Client worker processes, or auto; 0 holds them in this process [client.workers]."],
        ["per-route-max", None, None, "Most connections per (source IP, server IP:port) [client.per_route_max]."],
        ["close", None, None, "How our closes end: fin, or rst (no TIME_WAIT left) [client.close, default fin]."],
        ["status-interval", None, None, "Seconds between status lines [client.status_interval, default 5]."],
        ["master", "m", None, "HOST:PORT of a hub's controller: run as its agent [client.master]."],
        ["name", None, None, "Agent name shown by the controller [client.name, default hostname]."],
        ["secret-file", None, None, "File holding the control secret [control.secret_file]."],
    ]
    optFlags = [["lifeline", None, "Exit when stdin closes (used by the ssh launch and connscale run)."]]
    repeatable = ("source-ip",)
    opt_source_ip = repeat_option(
        "source-ip", "Source address(es): list or range 127.0.0.2-127.0.0.9; repeatable [client.source_ips]."
    )


class PoolService(Service):
    """Holds `target` connections in this process while running."""

    def __init__(self, pool: ConnectionPool, target: int, status: StatusService) -> None:
        self.pool = pool
        self.target = target
        self.status = status

    def startService(self) -> None:
        super().startService()
        self.pool.start(self.target)

    def stopService(self):
        super().stopService()
        # The last status line shows the numbers after every connection closed.
        return self.pool.close_all().addCallback(lambda _: self.status.tick())


def makeService(options: Options) -> IService:
    with startup_errors(PROG):
        return _make_service(options)


def _make_service(options: Options) -> IService:
    from twisted.internet import reactor

    cfg = options.load(PROG)
    top = _make(reactor, cfg)
    if options["lifeline"]:
        from connscale.procs.lifeline import Lifeline

        Lifeline(reactor, PROG).setServiceParent(top)
    return top


def _make(reactor, cfg) -> IService:
    c = cfg.client
    if c.master is not None:
        from connscale.control.agent import make_agent

        return make_agent(reactor, cfg, prog=PROG)
    workers = c.workers
    if workers == "auto":
        # One process unless its file budget can't hold the target.
        from connscale.host.limits import connection_budget, raise_nofile

        workers = plan.standalone_workers(c.connections, connection_budget(raise_nofile().soft))
    if workers:
        from connscale.control.agent import make_agent

        return make_agent(reactor, cfg, standalone_workers=workers, prog=PROG)
    return single_process(reactor, cfg)


def single_process(reactor, cfg) -> IService:
    c = cfg.client
    if cfg.net.fast_path:
        direct_dispatch(reactor)
    prepare_fds(c.connections, PROG)
    routes = make_routes(
        c.server_host, c.server_ports, c.source_ips, plan.tuple_cap(c.per_route_max, ephemeral_count())
    )
    try:
        pool = ConnectionPool(
            reactor, reactor, PoolSettings(c.interval, c.timeout, c.rate, c.framing, close=c.close,
                                           profile=c.profile_options(), tls=c.tls), routes,
            fast_path=cfg.net.fast_path,
        )
    except (TLSSetupError, ProfileError) as e:
        raise SystemExit(f"{PROG}: {e}") from None
    top = MultiService()
    status = StatusService(reactor, c.status_interval, pool.counters.snapshot, with_rtt=True, final=False)
    status.setServiceParent(top)
    PoolService(pool, c.connections, status).setServiceParent(top)
    log.info(
        "{prog}: {n} connections to {host} ports {ports} over {routes} routes at {rate}/s, "
        "interval {interval}s, timeout {timeout}s ({path})",
        prog=PROG, n=c.connections, host=c.server_host, ports=",".join(map(str, c.server_ports)),
        routes=len(routes), rate=c.rate, interval=c.interval, timeout=c.timeout,
        path="fast path" if cfg.net.fast_path else "Twisted's transports",
    )
    return top
