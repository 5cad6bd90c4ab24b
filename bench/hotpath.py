#!/usr/bin/env python3
"""Diagnostic: Python (user) CPU per ping round trip, both sides in one process.

One epoll reactor holds a connscale server (`PingServerFactory` on a lean
`ListeningPort`) and a connscale client pool connected to it over loopback;
the pool pings every connection every `--interval` seconds. The process's
user CPU time (getrusage) over the window divided by the round trips is what
connscale's own code costs per round trip, both sides together; the kernel's
share (system time) is printed apart. User time depends much less on what
else runs on the machine than wall or system time, which makes this the
figure to compare before and after a change of the hot path.

    python3 bench/hotpath.py                # 2000 connections, 10k pings/s
    python3 bench/hotpath.py -n 4000 --interval 0.5 --window 10
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--connections", type=int, default=2000)
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--window", type=float, default=8.0)
    ap.add_argument("--tick", type=float, default=None, help="timer wheel tick (default: the pool's)")
    ap.add_argument("--profile", help="write a cProfile of the window here")
    args = ap.parse_args()

    from twisted.internet.epollreactor import EPollReactor

    from connscale.metrics.counters import Counters
    from connscale.net.pool import ConnectionPool, PoolSettings
    from connscale.net.routes import Route
    from connscale.net.server import PingServerFactory, bind_sockets, listen_on
    from connscale.net.wheel import TimerWheel

    reactor = EPollReactor()
    server_counters = Counters()
    sock = bind_sockets("127.0.0.1", [0], 4096)[0]
    port = listen_on(reactor, sock, PingServerFactory("line", server_counters), server_counters.fail)
    number = port.getHost().port
    sources = [f"127.0.0.{2 + i}" for i in range(max(1, args.connections // 10000 + 1))]
    routes = [Route(src, "127.0.0.1", number, 14000) for src in sources]
    settings = PoolSettings(interval=args.interval, timeout=5.0, rate=20000.0)
    pool = ConnectionPool(reactor, reactor, settings, routes)
    if args.tick:
        pool.wheel = TimerWheel(reactor, args.tick, fire=pool.timer)

    def turn(t: float = 0.01) -> None:
        reactor.runUntilCurrent()
        timeout = reactor.timeout()
        reactor.doIteration(t if timeout is None else min(timeout, t))

    pool.set_target(args.connections)
    deadline = time.monotonic() + 60
    while pool.established < args.connections:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {pool.established} of {args.connections} connected")
        turn()
    warm_until = time.monotonic() + args.interval * 2 + 1
    while time.monotonic() < warm_until:
        turn()
    gc.collect()
    r0, p0, t0 = resource.getrusage(resource.RUSAGE_SELF), pool.counters.pongs, time.monotonic()
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    end = t0 + args.window
    while time.monotonic() < end:
        turn()
    if prof is not None:
        prof.disable()
        prof.dump_stats(args.profile)
    r1, p1, t1 = resource.getrusage(resource.RUSAGE_SELF), pool.counters.pongs, time.monotonic()
    rts = p1 - p0
    user = r1.ru_utime - r0.ru_utime
    system = r1.ru_stime - r0.ru_stime
    print(f"hotpath: {args.connections} connections, interval {args.interval:g}s, window {t1 - t0:.1f}s: "
          f"{rts / (t1 - t0):.0f} round trips/s")
    print(f"  user {user * 1e6 / rts:.2f} µs/RT (both sides' Python), system {system * 1e6 / rts:.2f} µs/RT "
          f"(kernel, loopback), failures client {sum(pool.counters.failures.values())} "
          f"server {sum(server_counters.failures.values())}")


if __name__ == "__main__":
    main()
