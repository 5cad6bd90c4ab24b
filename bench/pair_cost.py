#!/usr/bin/env python3
"""Kernel and user memory, and idle CPU, per connection *pair* (both ends on this host), for `connscale check`.

Starts, on loopback only, one connscale server and one connscale client process
(`--workers 0`, interval 60 s), and for each of --repeat rounds:
  before  the client holds 1 connection: read /proc/meminfo (Slab, SUnreclaim)
          and both processes' RSS;
  after   a client with N connections replaced it, every connection open on
          both sides, settled: read them again.
kernel bytes/pair = (Slab_after - Slab_before) / (N - 1); user bytes/pair = the
two processes' RSS growth / (N - 1). Each reading also measures both sides' CPU over
--window seconds: what holding a connection costs besides its pings ("idle"). Slab is machine-wide: other work on a shared
box adds noise, so the rounds are reported one by one and as a median.

The budget (connscale/diagnose/budget.py) uses these figures, kept in connscale/diagnose/costs.py (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

from connscale.host.inventory import read_meminfo  # noqa: E402


def cpu_window(srv: c.Proc, cli: c.Proc, window: float) -> dict[str, float]:
    """Cores each side used over `window` seconds (utime+stime of its process tree)."""
    t0 = {"server": c.tree_cpu_ticks(srv.pid), "client": c.tree_cpu_ticks(cli.pid)}
    c.sleep_polling(window, [srv.tail, cli.tail])
    t1 = {"server": c.tree_cpu_ticks(srv.pid), "client": c.tree_cpu_ticks(cli.pid)}
    return {side: (t1[side] - t0[side]) / c.HZ / window for side in t0}


def one_round(port: int, n: int, rate: float, settle: float, logdir: str, srv: c.Proc, k: int,
              window: float, interval: float) -> dict:
    base = c.Proc(f"client1-{k}", c.twistd_cmd(*c.client_args(port, 1, interval, rate)), logdir)
    cli = None
    try:
        c.wait_all_open(srv, base, 1, 30)
        c.sleep_polling(settle, [srv.tail, base.tail])
        m0 = read_meminfo()
        rss0 = c.tree_rss(srv.pid) + c.tree_rss(base.pid)
        cpu0 = cpu_window(srv, base, window)
        base.stop()
        base = None
        c.wait_until(lambda: int(c.last_status(srv.tail)["open"]) == 0, 15, "server open=0", [srv])
        cli = c.Proc(f"client-{k}", c.twistd_cmd(*c.client_args(port, n, interval, rate)), logdir)
        c.wait_all_open(srv, cli, n, 30 + 3 * n / rate)
        c.sleep_polling(settle, [srv.tail, cli.tail])
        m1 = read_meminfo()
        rss1 = c.tree_rss(srv.pid) + c.tree_rss(cli.pid)
        cpu1 = cpu_window(srv, cli, window)
    finally:
        if base:
            base.stop()
        if cli:
            cli.stop(30)
    added = n - 1
    pings = n / interval
    return {
        "client_cores_1": cpu0["client"],
        "server_cores_1": cpu0["server"],
        "client_cores_n": cpu1["client"],
        "server_cores_n": cpu1["server"],
        # What holding a connection costs besides its pings (timer wheel, GC, reports),
        # in millionths of a core; the pings are charged at bench/cpu_per_rtt.py's figures.
        "client_idle_ucores_per_conn": ((cpu1["client"] - cpu0["client"]) - pings * 14.2e-6) / added * 1e6,
        "server_idle_ucores_per_conn": ((cpu1["server"] - cpu0["server"]) - pings * 11.3e-6) / added * 1e6,
        "slab_per_pair": (m1["Slab"] - m0["Slab"]) / added,
        "sunreclaim_per_pair": (m1["SUnreclaim"] - m0["SUnreclaim"]) / added,
        "user_per_pair": (rss1 - rss0) / added,
        "used_per_pair": ((m1["MemTotal"] - m1["MemAvailable"]) - (m0["MemTotal"] - m0["MemAvailable"])) / added,
    }


def main() -> None:
    ap = c.bench_parser(__doc__)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--window", type=float, default=10.0, help="CPU window, seconds (default 10)")
    ap.add_argument("--interval", type=float, default=60.0, help="ping interval (default 60: mostly idle)")
    c.add_port_json(ap)
    args: argparse.Namespace = c.parse_bench_args(ap)
    port = args.port or c.free_port()
    logdir = tempfile.mkdtemp(prefix="connscale-bench-pair-")
    c.log(f"pair_cost: N={args.connections} port={port} logs in {logdir}")
    srv = c.Proc("server", c.twistd_cmd(*c.server_args(port)), logdir)
    rounds = []
    try:
        c.wait_until(lambda: c.last_status(srv.tail), 30, "the server's first status line", [srv])
        for k in range(args.repeat):
            r = one_round(port, args.connections, args.rate, args.settle, logdir, srv, k, args.window, args.interval)
            c.log(f"round {k + 1}: " + " ".join(f"{key}={v:.0f}" for key, v in r.items()))
            rounds.append(r)
    finally:
        srv.stop()
    res = {"bench": "pair_cost", "n": args.connections, "rounds": rounds,
           "median": {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}}
    print(f"\n== pair_cost N={args.connections}, {len(rounds)} rounds (bytes per connection pair)")
    print(f"   {'':<28}" + "".join(f"{'round ' + str(i + 1):>10}" for i in range(len(rounds))) + f"{'median':>10}")
    for key in rounds[0]:
        spec = ".3f" if "cores" in key and "ucores" not in key else ".2f" if "ucores" in key else ".0f"
        print(f"   {key:<28}" + "".join(f"{r[key]:>10{spec}}" for r in rounds) + f"{res['median'][key]:>10{spec}}")
    c.dump_json(args.json, res)


if __name__ == "__main__":
    main()
