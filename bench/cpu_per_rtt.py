#!/usr/bin/env python3
"""CPU per ping round trip for the Python tool, server and client side.

Starts, on loopback only:
  server: twistd -n --pidfile= connscale-server --workers 0 --port P --status-interval 1
  client: twistd -n --pidfile= connscale-client --workers 0 --connections N --interval 1
          --timeout 10 --rate R --server 127.0.0.1:P --source-ip 127.0.0.2 ...
so about N pings per second. Once both status lines say open=N it waits
--warm seconds (every connection is pinging by then), then measures over
--window seconds:
  CPU   utime+stime from /proc/PID/stat of each side's process tree (live
        descendants plus cutime/cstime of reaped ones, so worker processes
        under a hub/agent count too);
  RTs   pongs/s from the client's status lines, each stamped when this
        harness read it (polled every 50 ms), times the window length.
µs per round trip = CPU seconds * 1e6 / round trips, per side and both
together, compared with the C reference's ~26 µs (both sides, 20k pings/s,
its README; c_reference.py measures it on this machine).

The machine is shared: the report also shows how busy the whole machine was
and the busiest other processes, so a noisy run can be recognised.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402


def window_rate(lines: list[tuple[float, dict[str, str]]], t0: float, t1: float, key: str) -> tuple[float, list]:
    """Rate of a cumulative counter over status lines stamped inside [t0, t1]
    (widened by one line on each side when the window holds fewer than two)."""
    inside = [(t, d) for t, d in lines if t0 <= t <= t1]
    if len(inside) < 2:
        before = [x for x in lines if x[0] < t0][-1:]
        after = [x for x in lines if x[0] > t1][:1]
        inside = before + inside + after
    if len(inside) < 2:
        return 0.0, inside
    (ta, a), (tb, b) = inside[0], inside[-1]
    return (int(b[key]) - int(a[key])) / (tb - ta), inside


def run(args: argparse.Namespace) -> dict:
    n = args.connections
    port = args.port or c.free_port()
    logdir = tempfile.mkdtemp(prefix="connscale-bench-cpu-")
    c.log(f"cpu_per_rtt: N={n} interval={args.interval:g}s port={port} logs in {logdir}")
    res: dict = {"bench": "cpu_per_rtt", "impl": "python", "n": n, "interval": args.interval,
                 "offered_pings_per_s": n / args.interval, "port": port, "logdir": logdir}
    srv = cli = None
    try:
        sargs = c.server_args(port, args.server_workers)
        if args.server_workers:
            # A hub also runs a controller and a console; keep them off shared ports.
            sargs += ["--control", f"tcp:{c.free_port()}:interface=127.0.0.1", "--console", "none",
                      "--run-dir", logdir]
        srv = c.Proc("server", c.twistd_cmd(*sargs), logdir)
        c.wait_until(lambda: c.last_status(srv.tail), 60, "the server's first status line", [srv])
        cargs = c.client_args(port, n, args.interval, args.rate, args.timeout, args.client_workers)
        res["server_cmd"] = "twistd -n --pidfile= " + " ".join(sargs)
        res["client_cmd"] = "twistd -n --pidfile= " + " ".join(cargs)
        cli, res["open_s"] = c.start_client(srv, cargs, logdir, n, 60 + 3 * n / args.rate)
        c.log(f"warming up {args.warm:g} s")
        c.sleep_polling(args.warm, [srv.tail, cli.tail])
        win = c.CpuWindow({"server": srv.pid, "client": cli.pid})
        t0 = time.monotonic()
        spies = profile(args, srv.pid, cli.pid, logdir) if args.profile else []
        # Keep polling the logs through the window: line stamps are our clock.
        c.sleep_polling(max(0.0, args.window - (time.monotonic() - t0)), [srv.tail, cli.tail])
        t1 = time.monotonic()
        cpu = win.finish()
        if spies:
            res["profiles"] = finish_profile(spies)
        c.sleep_polling(1.2, [srv.tail, cli.tail])  # the line closing the window
        c_lines, s_lines = c.status_lines(cli.tail), c.status_lines(srv.tail)
        pong_rate, used = window_rate(c_lines, t0, t1 + 1.1, "pongs")
        ping_rate, _ = window_rate(c_lines, t0, t1 + 1.1, "pings")
        srv_rate, _ = window_rate(s_lines, t0, t1 + 1.1, "pongs")
        p50 = [float(d["rtt_p50_ms"]) for _, d in used if d.get("rtt_p50_ms", "-") != "-"]
        p99 = [float(d["rtt_p99_ms"]) for _, d in used if d.get("rtt_p99_ms", "-") != "-"]
        last_c, last_s = c_lines[-1][1], s_lines[-1][1]
        res.update(c.cpu_figures(cpu, pong_rate, ping_rate, srv_rate, p50, p99, {
            "open_at_end": {"server": int(last_s["open"]), "client": int(last_c["open"])},
            "failures": {"server": int(last_s.get("failures", 0)), "client": int(last_c.get("failures", 0))},
            "client_failure_keys": {k: v for k, v in last_c.items() if k.startswith("fail.")},
        }))
    finally:
        c.stop_pair(srv, cli, cli_grace=30)
    return res


def profile(args: argparse.Namespace, spid: int, cpid: int, logdir: str) -> list:
    """Start py-spy on both sides for most of the window (it costs a little
    CPU itself, which lands in 'not ours', not in either side)."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy")
    if not exe:
        c.log("--profile: py-spy not found (pip install py-spy); skipping")
        return []
    secs = max(2, int(args.window) - 3)
    spies = []
    for name, pid in (("server", spid), ("client", cpid)):
        path = os.path.join(logdir, f"pyspy-{name}.txt")
        p = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--duration", str(secs), "--rate", "250", "--format", "raw",
             "--nonblocking", "--output", path],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spies.append((name, path, p, secs))
    return spies


def finish_profile(spies: list) -> dict[str, str]:
    import subprocess

    out = {}
    for name, path, p, secs in spies:
        try:
            p.wait(secs + 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        out[name] = path
    return out


def report(res: dict) -> None:
    ref = c.C_README["both_us_per_rt"]
    print()
    print(f"== cpu_per_rtt (Python connscale) N={res['n']} interval={res['interval']:g}s "
          f"(offered {res['offered_pings_per_s']:.0f} pings/s), window {res['window_s']} s")
    print(f"   server: {res['server_cmd']}")
    print(f"   client: {res['client_cmd']}")
    print(f"   achieved: {res['pongs_per_s']:.0f} round trips/s (client pings/s {res['pings_per_s']:.0f}, "
          f"server pongs/s {res['server_pongs_per_s']:.0f}); RTT p50 {c.fmt(res['rtt_p50_ms_median'], '.3f')} ms, "
          f"worst 1-s p99 {c.fmt(res['rtt_p99_ms_max'], '.3f')} ms")
    print(f"   {'side':<7} {'CPU s':>7} {'% of a core':>11} {'µs/RT':>8}")
    print(f"   {'server':<7} {res['server_cpu_s']:>7.2f} {res['server_core_pct']:>11.1f} {c.fmt(res['server_us_per_rt']):>8}")
    print(f"   {'client':<7} {res['client_cpu_s']:>7.2f} {res['client_core_pct']:>11.1f} {c.fmt(res['client_us_per_rt']):>8}")
    both = res["both_us_per_rt"]
    print(f"   {'both':<7} {res['server_cpu_s'] + res['client_cpu_s']:>7.2f} {'':>11} {c.fmt(both):>8}")
    if both:
        ratio = both / ref
        print(f"   vs C reference ~{ref:g} µs/RT (both sides, 20k pings/s, its README): {ratio:.1f}x "
              f"(target <= {c.CPU_TARGET_FACTOR:g}x: {'met' if ratio <= c.CPU_TARGET_FACTOR else 'NOT met'})")
    print(f"   open at end: server {res['open_at_end']['server']}, client {res['open_at_end']['client']}; "
          f"failures: server {res['failures']['server']}, client {res['failures']['client']} "
          f"{res['client_failure_keys'] or ''}")
    print(f"   machine: {res['machine_busy_s']:.1f} CPU-s busy of {res['window_s'] * res['machine_cores']:.0f} "
          f"({res['machine_cores']} cores); not ours {res['others_cpu_s']} CPU-s, busiest others {res['others_top'][:3]}")
    if res["pongs_per_s"] < 0.95 * res["offered_pings_per_s"]:
        print("   NOTE: fewer round trips than offered: a side is saturated (see % of a core), so µs/RT is at "
              "saturation; lower -n to measure below the knee.")
    if res.get("profiles"):
        print(f"   py-spy raw stacks: {res['profiles']} (summarise: python bench/pyspy_top.py FILE)")


def main() -> None:
    ap = c.bench_parser(__doc__)
    ap.add_argument("--interval", type=float, default=1.0, help="ping interval, seconds (default 1)")
    ap.add_argument("--timeout", type=float, default=10.0, help="client pong timeout, seconds (default 10)")
    ap.add_argument("--rate", type=float, default=5000.0, help="client connects per second (default 5000)")
    ap.add_argument("--warm", type=float, default=None, help="seconds after all open before measuring "
                    "(default interval+3)")
    ap.add_argument("--window", type=float, default=20.0, help="measurement window, seconds (default 20)")
    ap.add_argument("--server-workers", type=int, default=0, help="server --workers (default 0: one process)")
    ap.add_argument("--client-workers", type=int, default=0, help="client --workers (default 0: one process)")
    ap.add_argument("--profile", action="store_true", help="also run py-spy on both sides during the window")
    c.add_port_json(ap)
    args = c.parse_bench_args(ap, lambda a: c.MAX_CONNS * max(1, a.client_workers, a.server_workers))
    if args.warm is None:
        args.warm = args.interval + 3
    c.run_bench(args, run, report)


if __name__ == "__main__":
    main()
