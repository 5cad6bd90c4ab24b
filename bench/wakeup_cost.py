#!/usr/bin/env python3
"""What one wake-up for one ping costs in Python: Twisted's loop, connscale's, and the floor.

At a million connections each worker carries ~300 pings a second, and almost
every wake-up handles one event. This bench isolates the Python part of such a
wake-up, in one process, with no other process in the way: per iteration it
writes one `Ping\\n` on one of N client sockets (raw, from this process), runs
exactly one turn of the loop under test (which reads the ping and writes the
pong) and reads the pong back (Twisted's transports send it one turn later,
when epoll reports the socket writable: that turn is counted too). The syscalls (two writes, two reads, one
epoll_wait) are the same for every variant; what differs is the Python around them:

  twisted     stock Twisted: `adoptStreamPort` with connscale's PingServerFactory
              (its LineReceiver), and one turn of `ReactorBase.mainLoop`
              (runUntilCurrent, timeout, doIteration)
  fast-old    connscale's fast path (lean transports, its dispatch in doIteration)
              under Twisted's turn: connscale before the lean main loop
  fast        connscale's fast path with its lean turn (`compat.epoll.replace_main_loop`)
  floor       the least Python can do: an epoll loop, a dict of fds, read, compare, write

It prints µs per iteration (warm caches: at a million, ~106 processes share two
cores and every wake-up also starts cold, which this does not show) and, with
--callgrind, instructions per iteration (valgrind's count, independent of the
load on the box: two runs of different length, the difference divided).

    python3 bench/wakeup_cost.py                 # timings, all variants
    python3 bench/wakeup_cost.py --callgrind     # + instructions per iteration (~2 min)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("twisted", "fast-old", "fast", "floor")


def clients(port: int, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        out.append(s)
    return out


def run(variant: str, n_conns: int, iterations: int) -> float:
    """Seconds per iteration after a warm-up."""
    ping = b"Ping\n"
    if variant == "floor":
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1024)
        cs = clients(lsock.getsockname()[1], n_conns)
        ep = select.epoll()
        handlers = {}
        for _ in range(n_conns):
            fd = lsock.accept()[0].detach()
            os.set_blocking(fd, False)
            ep.register(fd, select.EPOLLIN)
            handlers[fd] = fd
        read, write = os.read, os.write

        def turn() -> None:
            for fd, _ in ep.poll(3600, 512):
                if read(handlers[fd], 4096) == ping:
                    write(fd, b"Pong\n")
    else:
        from twisted.internet.epollreactor import EPollReactor

        from connscale.metrics.counters import Counters
        from connscale.net.dispatch import loop_for
        from connscale.net.server import PingServerFactory, bind_sockets, listen_on

        reactor = EPollReactor()
        reactor.running = True  # as inside run(): the turn waits for its timeout
        fast = variant != "twisted"
        if fast:
            loop_for(reactor)
        counters = Counters()
        sock = bind_sockets("127.0.0.1", [0], 1024)[0]
        port = listen_on(reactor, sock, PingServerFactory("line", counters), counters.fail, fast_path=fast)
        cs = clients(port.getHost().port, n_conns)
        # A worker always has a timer pending (its load probe): so has this one.
        reactor.callLater(3600, lambda: None)
        while counters.open < n_conns:
            reactor.runUntilCurrent()
            reactor.doIteration(0.01)
        if variant == "fast":
            turn = reactor.connscale_turn
        else:
            def turn() -> None:
                reactor.runUntilCurrent()
                reactor.doIteration(reactor.running and reactor.timeout())

    def iterate(count: int) -> None:
        for i in range(count):
            c = cs[i % n_conns]
            c.send(ping)
            turn()
            while True:
                try:
                    c.recv(64)
                    break
                except BlockingIOError:
                    # Twisted buffers a write and sends it when epoll says the
                    # socket is writable: one more turn (a worker's second wake-up).
                    turn()

    iterate(min(2000, iterations))
    t0 = time.perf_counter()
    iterate(iterations)
    return (time.perf_counter() - t0) / iterations


def callgrind(variant: str, n_conns: int, iterations: int) -> int:
    """Instructions of one whole run of this script for `variant` (valgrind)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                        os.path.abspath(__file__), "--one", variant, "-n", str(n_conns), "--iterations",
                        str(iterations)], check=True, capture_output=True, timeout=900,
                       env=dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
        with open(out) as f:
            text = f.read()
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    assert m, "no totals in callgrind's output"
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="server connections (default 1000)")
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--callgrind", action="store_true", help="also count instructions per iteration")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, REPO)
    if args.one:
        run(args.one, args.n, args.iterations)
        return
    results = {}
    print(f"{'variant':10s} {'µs/iteration':>13s} {'instructions/iteration':>23s}", flush=True)
    for variant in args.variants.split(","):
        # A child each: every variant starts from a fresh interpreter and reactor.
        out = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {REPO!r}); "
                              f"sys.argv = ['x']; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                              f"import wakeup_cost as w; print(w.run({variant!r}, {args.n}, {args.iterations}))"],
                             capture_output=True, text=True, timeout=300, check=True)
        us = float(out.stdout.strip().splitlines()[-1]) * 1e6
        ins = None
        if args.callgrind:
            small, large = args.iterations // 10, args.iterations // 5
            ins = (callgrind(variant, args.n, large) - callgrind(variant, args.n, small)) / (large - small)
        results[variant] = {"us_per_iteration": round(us, 2), "instructions_per_iteration": ins}
        print(f"{variant:10s} {us:>13.2f} {'-' if ins is None else f'{ins:,.0f}':>23s}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
