"""Worker process entry: one reactor holding one server or one client pool.

Run by a parent (hub or agent) as `python -m connscale.procs.worker ROLE JSON`, with
PB on stdin/stdout (see `childproc`) and its log on stderr. The parent asks
for snapshots and sets targets; the worker decides nothing on its own.
"""

from __future__ import annotations

import sys


def speaks_tls(argv: list[str]) -> bool:
    """Whether the spec on this worker's command line turns TLS on (read before anything is
    imported, unchecked: main() checks the spec, and a worker without ssl refuses TLS there)."""
    import json

    try:
        tls = json.loads(argv[2])["tls"]
        return isinstance(tls, dict) and tls["enabled"] is True
    except (IndexError, KeyError, TypeError, ValueError):
        return False


if __name__ == "__main__":
    # Before Twisted: no TLS, HTTP or cookie modules in a worker (a million
    # connections need about a hundred workers; bench/README.md has the MB),
    # unless its connections speak TLS: then ssl (not pyOpenSSL) comes in.
    from connscale.compat.startup import TLS_MODULES, import_twisted_lean, skip_unused_modules

    skip_unused_modules(keep=TLS_MODULES if speaks_tls(sys.argv) else ())
    import_twisted_lean()
    # Niced before the imports: a dozen workers starting mid-ramp must not take
    # the hub's and the agent's CPU either (see WORKER_NICE).
    import os as _os

    try:
        _os.nice(10)
    except OSError:
        pass

import json
import os
from typing import Any

import attrs
from twisted.spread import pb

from connscale.records.packed import pack, unpack
from connscale.host.limits import connection_budget, raise_nofile
from connscale.host.resources import process_resources
from connscale.metrics.counters import Counters
from connscale.metrics.load import LoadProbe
from connscale.net.pool import ConnectionPool, PoolSettings
from connscale.net.server import PingServerFactory, bind_sockets, serve
from connscale.procs.childproc import stop_reactor
from connscale.procs.records import (
    SPECS,
    ClientSpec,
    ServerSpec,
    WorkerHello,
    WorkerOrder,
    WorkerSpec,
    with_password,
)

#: Scheduling niceness of worker processes (the control plane runs at 0).
WORKER_NICE = 10
AUTOGROUP = "/proc/self/autogroup"


def weigh_own_autogroup(nice: int, path: str = AUTOGROUP) -> bool:
    """Give this process's scheduler autogroup the weight of `nice`; True if it took.

    Linux (kernel.sched_autogroup_enabled, on by default) schedules each session
    as one "autogroup", and autogroups share the CPU by their own weight, not by
    their processes' nice values. A worker is a session of its own (setsid), so
    its nice value alone weighed nothing against the hub and the agent: with 106
    workers each weighing as much as the hub's whole session, the control plane
    got ~1 % of the box; at a million the hub stalled 7-8 s mid-ramp and lost
    its agent. Weighted like its nice value, a worker stays its own autogroup
    (it still competes with other sessions as before) while the hub and the
    agent weigh ~9x more against it. A kernel without autogroups has no such
    file: the nice value then does the job by itself.
    """
    try:
        with open(path, "w") as f:
            f.write(str(nice))
        return True
    except OSError:
        return False


class WorkerRoot(pb.Root):
    role = "?"

    def __init__(self, reactor: Any, budget: int) -> None:
        self.reactor = reactor
        self.budget = budget
        self.counters = Counters()
        # Loop lag and CPU, so the hub can tell this worker's limit from the server's.
        self.load = LoadProbe(reactor)
        self.load.start()

    def remote_hello(self) -> dict[str, object]:
        return WorkerHello(os.getpid(), self.role, self.budget).to_wire()

    def extra(self) -> dict[str, object]:
        return {}

    def snapshot(self) -> dict[str, object]:
        data: dict[str, Any] = self.counters.snapshot().to_dict()
        data["resources"] = process_resources()
        data["load"] = self.load.take()
        data.update(self.extra())
        return data

    def remote_snapshot_packed(self) -> str:
        """Our snapshot as one JSON string (see records.packed): what the parent asks for."""
        return pack(self.snapshot())

    def remote_exit(self) -> None:
        self.reactor.callLater(0, stop_reactor, self.reactor)


class ServerWorkerRoot(WorkerRoot):
    role = "server"

    def __init__(self, reactor: Any, budget: int, spec: ServerSpec) -> None:
        super().__init__(reactor, budget)
        sockets = bind_sockets(spec.interface, spec.ports, spec.backlog, reuse_port=True)
        factory = PingServerFactory(spec.framing, self.counters, spec.max_line)
        self.ports = serve(reactor, sockets, factory, spec.tls, spec.fast_path)


class ClientWorkerRoot(WorkerRoot):
    role = "client"

    def __init__(self, reactor: Any, budget: int, spec: ClientSpec) -> None:
        super().__init__(reactor, budget)
        settings = PoolSettings(spec.interval, spec.timeout, spec.rate, spec.framing, close=spec.close,
                                profile=spec.profile, tls=spec.tls)
        self.pool = ConnectionPool(reactor, reactor, settings, [], counters=self.counters, fast_path=spec.fast_path)

    def remote_set_target_packed(self, text: object) -> int:
        """Our order as one JSON string (records.packed): an order carries every route (640 at
        a million), ~2,500 PB elements otherwise."""
        order = WorkerOrder.from_wire(unpack(text))
        if order.rate is not None:
            self.pool.settings = attrs.evolve(self.pool.settings, rate=order.rate)
        self.pool.set_routes(list(order.routes))
        self.pool.set_target(order.target)
        return self.pool.wanted()

    def remote_set_rate(self, rate: object) -> None:
        value = ClientSpec.from_wire({"rate": rate}).rate
        self.pool.settings = attrs.evolve(self.pool.settings, rate=value)

    def remote_drain(self):
        return self.pool.close_all()

    def extra(self) -> dict[str, object]:
        p = self.pool
        return {"established": p.established, "connecting": p.connecting, "pending": p.pending}


ROLES = {"server": ServerWorkerRoot, "client": ClientWorkerRoot}


def main(argv: list[str] | None = None) -> None:
    role, spec = read_spec(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor

    if spec.fast_path:
        from connscale.net.dispatch import direct_dispatch

        direct_dispatch(reactor)
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # stdout is the PB channel: the log must go to stderr and nowhere else.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr, timeFormat="")], redirectStandardIO=False)
    nofile = raise_nofile()
    budget = connection_budget(nofile.soft)
    from connscale.config.tls import TLSSetupError
    from connscale.net.profiles import ProfileError
    from connscale.net.server import ListenError
    from connscale.procs.childproc import serve_stdio

    try:
        root = ROLES[role](reactor, budget, spec)
    except (ListenError, TLSSetupError, ProfileError) as e:
        sys.stderr.write(f"{spec.name}: {e}\n")
        sys.exit(3)
    serve_stdio(reactor, root, lambda: stop_reactor(reactor))
    stand_aside()
    import gc

    # What start-up made (modules, Twisted, PB: ~100,000 objects) lives as long as
    # the worker: out of the collector's way, so a full collection scans only
    # what the connections made since (load reports gc_ms and gc_full).
    gc.freeze()
    # IReactorCore.run names no arguments; every posix reactor's takes this one.
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]


def read_spec(argv: list[str]) -> tuple[str, WorkerSpec]:
    """(role, spec) from the command line, or exit 2 with one line."""
    from connscale.records.base import RecordError

    try:
        role = argv[0]
        # The target's password comes in our environment, never on the command line (`ps`).
        return role, with_password(SPECS[role].from_wire(json.loads(argv[1])), os.environ)
    except (IndexError, KeyError, ValueError, RecordError) as e:
        # A parent of another version, or a typo by hand: one line, exit 2.
        sys.stderr.write(f"connscale worker: bad arguments: {e}\n")
        sys.exit(2)


def stand_aside() -> None:
    """Out of the parent's session and signals, and below the control plane's CPU share."""
    import signal

    # Only the parent stops a worker: a Ctrl-C or a signal to the parent's
    # process group must not look like a crash. A parent that dies closes our
    # stdin, and the orphan guard ends us then.
    try:
        os.setsid()
    except OSError:
        pass
    weigh_own_autogroup(WORKER_NICE)
    # A hundred workers under full load must not starve the hub, the agent and
    # the run, whose keepalives and reports have deadlines (at a million
    # connections, unniced, the hub missed its 6 s keepalive mid-ramp). Workers
    # of both sides are niced alike, so their share against each other is unchanged.
    # (`python -m` has done it before its imports; main() called otherwise does it here.)
    if os.getpriority(os.PRIO_PROCESS, 0) < WORKER_NICE:
        try:
            os.nice(WORKER_NICE - os.getpriority(os.PRIO_PROCESS, 0))
        except OSError:
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)

if __name__ == "__main__":
    main()
