#!/usr/bin/env python3
"""User memory per connection, server and client side, for the Python tool.

Starts, on loopback only:
  server: twistd -n --pidfile= connscale-server --workers 0 --port P --status-interval 1
  client: twistd -n --pidfile= connscale-client --workers 0 --connections N --interval 60
          --timeout 10 --rate 5000 --server 127.0.0.1:P --source-ip 127.0.0.2 ...
Reads VmRSS (process tree) of both from /proc:
  baseline  first the same client command with --connections 1: once both
            status lines report open=1, plus --settle seconds, read the
            server and that client; then that client is stopped. What
            either side allocates once after start-up (logging, services,
            status ticks, the connect path) is thus in the baseline;
  loaded    the N-connection client: both status lines report open=N, plus
            --settle seconds;
  (pinged)  with --after-ping: one more reading after interval+5 s, when every
            connection has sent a ping and read a pong.
bytes/connection = (RSS_N - RSS_1) / (N - 1), per side (N = open connections).

Prints those next to the C reference's 12 B (server) / 38 B (client) and the
brief's budget of 1.5 KB per connection per side. Everything is bounded and
stopped by pid.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402


def run(args: argparse.Namespace) -> dict:
    n = args.connections
    if n < 2:
        raise SystemExit("mem_per_conn: --connections must be at least 2 (the baseline holds 1)")
    port = args.port or c.free_port()
    logdir = tempfile.mkdtemp(prefix="connscale-bench-mem-")
    c.log(f"mem_per_conn: N={n} port={port} logs in {logdir}")
    srv = cli = base_cli = None
    res: dict = {"bench": "mem_per_conn", "impl": "python", "n": n, "interval": args.interval, "port": port,
                 "logdir": logdir}

    def reading(label: str, client: c.Proc) -> tuple:
        return (label, {"server": c.tree_rss(srv.pid), "client": c.tree_rss(client.pid)},
                {"server": c.rss_detail(srv.pid), "client": c.rss_detail(client.pid)},
                c.last_status(srv.tail), c.last_status(client.tail))

    try:
        sargs = c.server_args(port)
        srv = c.Proc("server", c.twistd_cmd(*sargs), logdir)
        c.wait_until(lambda: c.last_status(srv.tail), 30, "the server's first status line", [srv])
        cargs1 = c.client_args(port, 1, args.interval, args.rate)
        cargs = c.client_args(port, n, args.interval, args.rate)
        res["client_cmd"] = "twistd -n --pidfile= " + " ".join(cargs)
        res["server_cmd"] = "twistd -n --pidfile= " + " ".join(sargs)
        res["baseline_client_cmd"] = "twistd -n --pidfile= " + " ".join(cargs1)

        # Baseline: the same client command holding one connection, settled.
        base_cli = c.Proc("client-1", c.twistd_cmd(*cargs1), logdir)
        c.wait_all_open(srv, base_cli, 1, 30)
        c.log(f"baseline: 1 connection open; settling {args.settle} s")
        c.sleep_polling(args.settle, [srv.tail, base_cli.tail])
        _, base, base_detail, s_st, c_st = reading("baseline", base_cli)
        base_open = {"server": int(s_st["open"]), "client": int(c_st["open"])}
        if base_open != {"server": 1, "client": 1}:
            raise RuntimeError(f"baseline: expected open=1 on both sides after settling, got {base_open}")
        c.log(f"baseline RSS (1 connection) server {base['server'] / 2**20:.1f} MiB, "
              f"client {base['client'] / 2**20:.1f} MiB")
        base_cli.stop()
        base_cli = None
        c.wait_until(lambda: int(c.last_status(srv.tail)["open"]) == 0, 15,
                     "the server to report open=0 after the baseline client stopped", [srv])

        cli, res["open_s"] = c.start_client(srv, cargs, logdir, n, 30 + 3 * n / args.rate)
        c.log(f"settling {args.settle} s")
        c.sleep_polling(args.settle, [srv.tail, cli.tail])

        readings = [reading("loaded", cli)]
        if args.after_ping:
            wait = args.interval + 5
            c.log(f"waiting {wait:g} s so that every connection has pinged")
            c.sleep_polling(wait, [srv.tail, cli.tail])
            readings.append(reading("pinged", cli))
        res["baseline_rss"] = base
        res["baseline_detail"] = base_detail
        res["baseline_open"] = base_open
        res["readings"] = []
        for label, rss, detail, s_st, c_st in readings:
            opened = {"server": int(s_st["open"]), "client": int(c_st["open"])}
            r = {"label": label, "rss": rss, "detail": detail, "open": opened,
                 "server_status": s_st, "client_status": c_st}
            for side in ("server", "client"):
                added = max(1, opened[side] - base_open[side])
                r[f"{side}_bytes_per_conn"] = (rss[side] - base[side]) / added
                anon0 = base_detail[side].get("RssAnon", 0)
                r[f"{side}_anon_bytes_per_conn"] = (detail[side].get("RssAnon", 0) - anon0) / added
            res["readings"].append(r)
        res["failures"] = {"server": int(readings[-1][3].get("failures", 0)),
                           "client": int(readings[-1][4].get("failures", 0))}
    finally:
        if base_cli:
            base_cli.stop()
        c.stop_pair(srv, cli, cli_grace=30)
    return res


def report(res: dict) -> None:
    budget = c.BUDGET_BYTES_PER_CONN
    cref = {"server": c.C_README["server_user_bytes_per_conn"], "client": c.C_README["client_user_bytes_per_conn"]}
    print()
    print(f"== mem_per_conn (Python connscale, one process per side) N={res['n']} interval={res['interval']:g}s "
          f"all open in {res.get('open_s', '?')} s")
    print(f"   server: {res['server_cmd']}")
    print(f"   client: {res['client_cmd']}")
    for r in res["readings"]:
        print(f"-- reading '{r['label']}' (server open={r['open']['server']}, client open={r['open']['client']})")
        print(f"   {'side':<7} {'RSS base MiB':>12} {'RSS now MiB':>12} {'B/conn':>8} {'anon B/conn':>11} "
              f"{'C ref B':>8} {'x C ref':>8} {'budget B':>9} {'x budget':>9}")
        for side in ("server", "client"):
            b = r[f"{side}_bytes_per_conn"]
            print(f"   {side:<7} {res['baseline_rss'][side] / 2**20:>12.1f} {r['rss'][side] / 2**20:>12.1f} "
                  f"{b:>8.0f} {r[f'{side}_anon_bytes_per_conn']:>11.0f} {cref[side]:>8.0f} "
                  f"{b / cref[side]:>7.0f}x {budget:>9.0f} {b / budget:>8.2f}x")
    print(f"   failures: server {res['failures']['server']}, client {res['failures']['client']}")
    print("   RSS base = each side with 1 connection (a separate 1-connection client, settled); "
          "B/conn = (RSS now - RSS base) / (open - 1).")
    print("   C ref B = the C reference's user memory per connection from its README (reference box);")
    print("   'x budget' > 1.00 means over the 1.5 KB-per-connection-per-side budget.")


def main() -> None:
    ap = c.bench_parser(__doc__)
    ap.add_argument("--rate", type=float, default=5000.0, help="client connects per second (default 5000)")
    ap.add_argument("--interval", type=float, default=60.0, help="ping interval, seconds (default 60)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait after all are open (default 3)")
    ap.add_argument("--after-ping", action="store_true", help="also read after interval+5 s (every conn pinged)")
    c.add_port_json(ap)
    args = c.parse_bench_args(ap, why="(one process per side, RLIMIT_NOFILE 20000)")
    c.run_bench(args, run, report)


if __name__ == "__main__":
    main()
