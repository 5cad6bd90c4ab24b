"""Worker process entry: one reactor holding one server or one client pool.

Run by a parent (hub or agent) as `python -m connscale.procs.worker ROLE JSON`, with
PB on stdin/stdout (see `childproc`) and its log on stderr. The parent asks
for snapshots and sets targets; the worker decides nothing on its own.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Workers never speak TLS. Without this, twisted.internet.tcp imports
    # pyOpenSSL: 13 MB of RSS per worker process, and a million connections
    # need about a hundred workers (bench: 47 -> 34 MB at start-up).
    sys.modules.setdefault("OpenSSL", None)  # type: ignore[arg-type]

import json
import os
from typing import Any

from twisted.spread import pb

from connscale.host.limits import connection_budget, raise_nofile
from connscale.host.resources import process_resources
from connscale.metrics.counters import Counters
from connscale.net.pool import ConnectionPool, PoolSettings
from connscale.net.routes import Route
from connscale.net.server import ListeningService, PingServerFactory, bind_sockets
from connscale.procs.childproc import stop_reactor


class WorkerRoot(pb.Root):
    role = "?"

    def __init__(self, reactor: Any, budget: int) -> None:
        self.reactor = reactor
        self.budget = budget
        self.counters = Counters()

    def remote_hello(self) -> dict[str, object]:
        return {"pid": os.getpid(), "role": self.role, "budget": self.budget}

    def extra(self) -> dict[str, object]:
        return {}

    def remote_snapshot(self) -> dict[str, object]:
        data: dict[str, Any] = self.counters.snapshot().to_dict()
        data["resources"] = process_resources()
        data.update(self.extra())
        return data

    def remote_exit(self) -> None:
        self.reactor.callLater(0, stop_reactor, self.reactor)


class ServerWorkerRoot(WorkerRoot):
    role = "server"

    def __init__(self, reactor: Any, budget: int, spec: dict[str, Any]) -> None:
        super().__init__(reactor, budget)
        sockets = bind_sockets(spec["interface"], spec["ports"], spec["backlog"], reuse_port=True)
        factory = PingServerFactory(spec["framing"], self.counters, spec.get("max_line", 1024))
        self.listening = ListeningService(reactor, sockets, factory)
        self.listening.startService()


class ClientWorkerRoot(WorkerRoot):
    role = "client"

    def __init__(self, reactor: Any, budget: int, spec: dict[str, Any]) -> None:
        super().__init__(reactor, budget)
        settings = PoolSettings(spec["interval"], spec["timeout"], spec["rate"], spec["framing"])
        self.pool = ConnectionPool(reactor, reactor, settings, [], counters=self.counters)

    def remote_set_target(self, target: int, routes: list[list[Any]]) -> int:
        self.pool.set_routes([Route(src or None, host, int(port), int(quota)) for src, host, port, quota in routes])
        self.pool.set_target(int(target))
        return self.pool.wanted()

    def remote_set_rate(self, rate: float) -> None:
        import attrs

        self.pool.settings = attrs.evolve(self.pool.settings, rate=float(rate))

    def remote_drain(self):  # type: ignore[no-untyped-def]
        return self.pool.close_all()

    def extra(self) -> dict[str, object]:
        p = self.pool
        return {"established": p.established, "connecting": p.connecting, "pending": p.pending}


ROLES = {"server": ServerWorkerRoot, "client": ClientWorkerRoot}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    role, spec = argv[0], json.loads(argv[1])
    name = spec.get("name", f"{role}-worker")
    from twisted.internet import reactor

    from connscale.net.dispatch import direct_dispatch

    direct_dispatch(reactor)
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # stdout is the PB channel: the log must go to stderr and nowhere else.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr, timeFormat="")], redirectStandardIO=False)
    nofile = raise_nofile()
    budget = connection_budget(nofile.soft)
    from connscale.net.server import ListenError
    from connscale.procs.childproc import serve_stdio

    try:
        root = ROLES[role](reactor, budget, spec)
    except ListenError as e:
        sys.stderr.write(f"{name}: {e}\n")
        sys.exit(3)
    serve_stdio(reactor, root, lambda: stop_reactor(reactor))
    # Only the parent stops a worker: a Ctrl-C or a signal to the parent's
    # process group must not look like a crash. A parent that dies closes our
    # stdin, and the orphan guard ends us then.
    try:
        os.setsid()
    except OSError:
        pass
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
