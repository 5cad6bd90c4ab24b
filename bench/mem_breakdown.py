#!/usr/bin/env python3
"""Where the Python tool's per-connection memory goes (tracemalloc).

Runs the product's own server pieces (bind_sockets, ListeningService,
PingServerFactory) and client pool (ConnectionPool) in two child processes
under tracemalloc, opens N connections on loopback, and prints the
allocation sites that grew, in bytes per connection, for each side. It
diagnoses; mem_per_conn.py (real twistd processes, RSS) is the measurement.
Python-level allocations only: RSS also holds allocator slack and pages.

usage: python bench/mem_breakdown.py [-n 5000] [-k 15] [--frames 1] [--interval 60 --hold 1]
       python bench/mem_breakdown.py --interval 2 --hold 4   # after every connection pinged
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _report(label: str, snap0, snap1, n: int, k: int, frames: int) -> None:
    stats = snap1.compare_to(snap0, "traceback" if frames > 1 else "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"\n-- {label}: {n} connections, Python allocations grew {total / n:.0f} B/conn "
          f"(tracemalloc; top {k} sites)", flush=True)
    for s in stats[:k]:
        if s.size_diff <= 0:
            continue
        tb = s.traceback
        where = " <- ".join(f"{os.path.relpath(fr.filename, os.path.dirname(os.path.dirname(fr.filename)))}:{fr.lineno}"
                            for fr in list(tb)[:frames])
        print(f"   {s.size_diff / n:7.0f} B/conn {s.count_diff / n:6.2f} blocks/conn  {where}", flush=True)


BOUND_S = 120.0  # a side that never reaches N still ends


def give_up(reactor) -> None:  # type: ignore[no-untyped-def]
    print(f"gave up after {BOUND_S:g}s without reaching the target", flush=True)
    print("DONE", flush=True)
    reactor.stop()


def role_server(port: int, n: int, k: int, frames: int, hold: float) -> None:
    import tracemalloc

    tracemalloc.start(frames)
    from twisted.internet import reactor, task

    from connscale.host.limits import raise_nofile
    from connscale.metrics.counters import Counters
    from connscale.net.listen import ListeningService
    from connscale.net.server import PingServerFactory, bind_sockets

    raise_nofile()
    counters = Counters()
    svc = ListeningService(reactor, bind_sockets("127.0.0.1", [port], 4096), PingServerFactory("line", counters))
    svc.startService()
    state: dict = {}

    def start() -> None:
        state["snap0"] = tracemalloc.take_snapshot()
        print("LISTENING", flush=True)

    def check() -> None:
        if "done" not in state and counters.open >= n:
            state["done"] = True
            reactor.callLater(hold, finish)

    def finish() -> None:
        _report("server", state["snap0"], tracemalloc.take_snapshot(), counters.open, k, frames)
        print("DONE", flush=True)

    reactor.callWhenRunning(start)
    task.LoopingCall(check).start(0.1, now=False)
    reactor.callLater(BOUND_S, give_up, reactor)
    reactor.run()


def role_client(port: int, n: int, k: int, frames: int, interval: float, hold: float) -> None:
    import tracemalloc

    tracemalloc.start(frames)
    from twisted.internet import reactor, task

    from connscale.host.limits import raise_nofile
    from connscale.net.pool import ConnectionPool, PoolSettings
    from connscale.net.routes import make_routes

    raise_nofile()
    routes = make_routes("127.0.0.1", [port], ["127.0.0.2", "127.0.0.3"], 14000)
    pool = ConnectionPool(reactor, reactor, PoolSettings(interval, 10.0, 5000.0, "line"), routes)
    state: dict = {}

    def start() -> None:
        state["snap0"] = tracemalloc.take_snapshot()
        pool.start(n)

    def check() -> None:
        if "done" not in state and pool.established >= n:
            state["done"] = True
            reactor.callLater(hold, finish)

    def finish() -> None:
        _report(f"client (interval {interval:g}s)", state["snap0"], tracemalloc.take_snapshot(),
                pool.established, k, frames)
        print("DONE", flush=True)

    reactor.callWhenRunning(start)
    task.LoopingCall(check).start(0.1, now=False)
    reactor.callLater(BOUND_S, give_up, reactor)
    reactor.run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--connections", type=int, default=5000)
    ap.add_argument("-k", type=int, default=15, help="sites to show per side")
    ap.add_argument("--frames", type=int, default=1, help="traceback depth per site (default 1)")
    ap.add_argument("--interval", type=float, default=60.0, help="client ping interval (default 60)")
    ap.add_argument("--hold", type=float, default=1.0, help="seconds after all open before the snapshot; "
                    "more than --interval shows the memory that the first ping adds (default 1)")
    ap.add_argument("--role", choices=("server", "client"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "server":
        return role_server(args.port, args.connections, args.k, args.frames, args.hold)
    if args.role == "client":
        return role_client(args.port, args.connections, args.k, args.frames, args.interval, args.hold)
    if not 1 <= args.connections <= 19_000:
        ap.error("--connections must be 1..19000")

    import _common as c

    c.stop_on_signals()
    port = c.free_port()
    me = [sys.executable, os.path.abspath(__file__), "-n", str(args.connections), "-k", str(args.k),
          "--frames", str(args.frames), "--interval", str(args.interval), "--hold", str(args.hold),
          "--port", str(port)]
    procs = []
    try:
        srv = subprocess.Popen(me + ["--role", "server"], stdout=subprocess.PIPE, text=True, cwd=c.REPO)
        procs.append(srv)
        deadline = time.monotonic() + 30
        line = srv.stdout.readline()
        if "LISTENING" not in line or time.monotonic() > deadline:
            raise SystemExit(f"server did not start: {line!r}")
        cli = subprocess.Popen(me + ["--role", "client"], stdout=subprocess.PIPE, text=True, cwd=c.REPO)
        procs.append(cli)
        for p in (cli, srv):
            # readline blocks; the children finish on their own within seconds,
            # and a stuck one is killed in `finally` by the harness's timeout.
            for line in p.stdout:
                if line.strip() == "DONE":
                    break
                print(line, end="")
    finally:
        for p in procs:
            c.stop_process(p, "bench child", ((signal.SIGTERM, 15),))


if __name__ == "__main__":
    main()
