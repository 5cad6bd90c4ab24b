#!/usr/bin/env python3
"""Diagnostic: CPU per connect, server and client side, no pings.

Two modes, both over loopback with connscale's own transports and pool:

- `--one-loop` (default off): server and client in one epoll loop, one process;
  connects as fast as asked. User and system CPU (getrusage) per connect, both
  sides together: the cost of a connect when events batch.
- default: one server process and one client process (forked), the client
  paced at `--rate` (a worker's share of a ramp: 15,000/s over 53 workers is
  283/s). CPU of each process from /proc/PID/stat per connect: what a worker
  pays when each wake-up brings a few connects.

    python3 bench/connect_cost.py -n 3000 --rate 283
    python3 bench/connect_cost.py -n 3000 --rate 283 --batch 0   # pacing every 10 ms, as before
    python3 bench/connect_cost.py --one-loop -n 9000 --rate 15000
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def turn(reactor, t: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    reactor.runUntilCurrent()
    timeout = reactor.timeout()
    reactor.doIteration(t if timeout is None else min(timeout, t))


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user + system, user) seconds of a process."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[11]) / tick


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3000, help="connections (at most ~9,000 with --one-loop)")
    ap.add_argument("--rate", type=float, default=283.0, help="connects per second asked of the pool")
    ap.add_argument("--batch", type=int, default=None, help="override net.pacing.PACE_BATCH (0: every 10 ms)")
    ap.add_argument("--one-loop", action="store_true", help="server and client in one process and loop")
    args = ap.parse_args()

    from twisted.internet.epollreactor import EPollReactor

    import connscale.net.pacing as pacing
    from connscale.host.limits import raise_nofile
    from connscale.metrics.counters import Counters
    from connscale.net.pool import ConnectionPool, PoolSettings
    from connscale.net.routes import Route
    from connscale.net.server import PingServerFactory, bind_sockets, listen_on

    raise_nofile()
    if args.batch is not None:
        pacing.PACE_BATCH = args.batch
    sock = bind_sockets("127.0.0.1", [0], 4096)[0]
    port = sock.getsockname()[1]
    routes = [Route(f"127.0.0.{2 + i}", "127.0.0.1", port, 14000) for i in range(4)]
    settings = PoolSettings(interval=600, timeout=5.0, rate=args.rate, close="rst")

    if args.one_loop:
        reactor = EPollReactor()
        sc = Counters()
        listen_on(reactor, sock, PingServerFactory("line", sc), sc.fail)
        pool = ConnectionPool(reactor, reactor, settings, routes)
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        pool.set_target(args.n)
        while (pool.established < args.n or sc.open < args.n) and time.monotonic() - t0 < 120:
            turn(reactor, 0.01)
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        user = (r1.ru_utime - r0.ru_utime) * 1e6 / args.n
        system = (r1.ru_stime - r0.ru_stime) * 1e6 / args.n
        print(f"one loop: {pool.established} connects in {t1 - t0:.2f} s ({pool.established / (t1 - t0):.0f}/s): "
              f"user {user:.1f} µs + system {system:.1f} µs per connect, both sides; "
              f"failures {dict(pool.counters.failures)} {dict(sc.failures)}")
        return

    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    server = os.fork()
    if server == 0:
        reactor = EPollReactor()
        sc = Counters()
        listen_on(reactor, sock, PingServerFactory("line", sc), sc.fail)
        while True:
            turn(reactor)
    client = os.fork()
    if client == 0:
        reactor = EPollReactor()
        pool = ConnectionPool(reactor, reactor, settings, routes)
        os.read(go_r, 1)
        pool.set_target(args.n)
        deadline = time.monotonic() + 120
        while pool.established < args.n and time.monotonic() < deadline:
            turn(reactor)
        os.write(done_w, b"x")
        while True:
            turn(reactor)
    try:
        time.sleep(1.0)  # both loops running
        s0, c0, t0 = proc_cpu(server), proc_cpu(client), time.monotonic()
        os.write(go_w, b"g")
        os.read(done_r, 1)
        s1, c1, t1 = proc_cpu(server), proc_cpu(client), time.monotonic()
    finally:
        for pid in (server, client):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    n = args.n
    print(f"two processes, {args.rate:g} connects/s asked: {n} in {t1 - t0:.1f} s; "
          f"server {(s1[0] - s0[0]) * 1e6 / n:.0f} µs per connect (user {(s1[1] - s0[1]) * 1e6 / n:.0f}), "
          f"client {(c1[0] - c0[0]) * 1e6 / n:.0f} µs (user {(c1[1] - c0[1]) * 1e6 / n:.0f})")


if __name__ == "__main__":
    main()
