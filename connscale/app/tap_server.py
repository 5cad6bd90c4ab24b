"""`twistd connscale-server`: the ping/pong server (and, with workers, the hub)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.application.service import IService, MultiService
from twisted.logger import Logger

from connscale.app.startup import ConfigOptions, repeat_option, startup_errors
from connscale.host.limits import prepare_fds
from connscale.host.sysctl import backlog_warning, read_sysctl
from connscale.metrics.counters import Counters
from connscale.metrics.status import StatusService
from connscale.net.dispatch import direct_dispatch
from connscale.net.listen import ListeningService
from connscale.net.server import ListenError, PingServerFactory, bind_sockets

log = Logger(namespace="connscale.server")
PROG = "connscale-server"


class Options(ConfigOptions):
    synopsis = "[--config FILE] [--interface ADDR] [--port P ...] [options]"
    longdesc = "Answer every Ping with Pong on every port; log a status line every few seconds."
    optParameters = ConfigOptions.optParameters + [
        ["interface", "i", None, "Address to listen on [server.interface, default 127.0.0.1]."],
        ["backlog", "b", None, "listen() backlog [server.backlog, default 4096]."],
        ["framing", None, None, "line, raw or websocket [server.framing, default line]."],
        ["workers", "w", None, "Server worker processes, or auto; 0 serves in this process [server.workers]."],
        ["status-interval", None, None, "Seconds between status lines [server.status_interval, default 5]."],
        ["max-line", None, None, "Longest accepted line in bytes [server.max_line, default 1024]."],
        ["control", None, None, "Controller endpoint [control.listen]."],
        ["secret-file", None, None, "File holding the control secret [control.secret_file]."],
        ["console", None, None, "ssh or none [control.console]."],
        ["console-listen", None, None, "Console endpoint [control.console_listen]."],
        ["run-dir", None, None, "Parent directory of run records [run.dir, default runs]."],
        ["record-dir", None, None, "Exact directory for this hub's timeline.jsonl (default run.dir/<time>-hub)."],
    ]
    optFlags = [["lifeline", None, "Exit when stdin closes (used by connscale run)."],
                ["no-summary", None, "Write no manifest.json at start nor summary.json at stop (connscale run "
                                     "writes its own)."]]
    repeatable = ("port",)
    opt_port = repeat_option("port", "Port(s) to listen on: 8989, 8989-8992 or 8989,8990; repeatable [server.ports].")
    opt_p = opt_port


def makeService(options: Options) -> IService:
    with startup_errors(PROG):
        return _make_service(options)


def _make_service(options: Options) -> IService:
    from twisted.internet import reactor

    cfg = options.load(PROG)
    s = cfg.server
    warning = backlog_warning(s.backlog, read_sysctl("net.core.somaxconn"))  # type: ignore[arg-type]
    if warning:
        log.warn("{prog}: {warning}", prog=PROG, warning=warning)
    if s.workers == 0:
        top = single_process(reactor, cfg)
    else:
        from connscale.control.hub import make_hub

        top = make_hub(reactor, cfg, record_dir=options["record-dir"], prog=PROG,
                       summary=not options["no-summary"])
    if options["lifeline"]:
        from connscale.procs.lifeline import Lifeline

        Lifeline(reactor, PROG).setServiceParent(top)
    return top


def single_process(reactor, cfg) -> IService:
    from connscale.control.hub import server_tls

    s = cfg.server
    if cfg.net.fast_path:
        direct_dispatch(reactor)
    prepare_fds(0, PROG)
    try:
        sockets = bind_sockets(s.interface, s.ports, s.backlog)
    except ListenError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    counters = Counters()
    top = MultiService()
    # `auto` outside a hub has no run directory: its certificate goes to a private temporary one.
    tls = server_tls(s.tls, s.interface, Path(tempfile.mkdtemp(prefix="connscale-tls-")), PROG) if s.tls.enabled else s.tls
    listening = ListeningService(reactor, sockets, PingServerFactory(s.framing, counters, s.max_line),
                                 fast_path=cfg.net.fast_path, tls=tls)
    listening.setServiceParent(top)
    StatusService(reactor, s.status_interval, counters.snapshot, with_rtt=False).setServiceParent(top)
    log.info(
        "{prog}: serving {framing} framing{tls} on {interface} ports {ports} (backlog {backlog}; {path})",
        prog=PROG, framing=s.framing, interface=s.interface, ports=",".join(map(str, s.ports)), backlog=s.backlog,
        tls=" over TLS" if tls.enabled else "", path="fast path" if cfg.net.fast_path else "Twisted's transports",
    )
    return top
