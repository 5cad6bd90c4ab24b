#!/usr/bin/env python3
"""The C reference (../shared/reference/c-pingpong beside the repository) on this machine.

Builds pingpong_server.c and pingpong_client.c with `gcc -O2` into a temp
dir and runs the same two measurements as the Python benches, at the same
N and interval, on loopback (server 127.0.0.1, client source IPs 127.0.0.x):

  mem  interval 60 s: VmRSS of each side's process tree before connecting
       (server after SERVER_READY; client launcher+children while they wait
       out -W before connecting) and once all N are established (+settle s).
  cpu  interval 1 s (~N pings/s): utime+stime of each side's tree over
       --window s after warm-up; round trips from the client's per-second
       pongs_total, stamped when read.

By default each side is one worker process (-k 1), like the Python tool's
--workers 0; -ks/-kc change that. Every run is bounded by the binaries' own
-D / -H flags, and the harness stops what is left by pid.

With --python-mem/--python-cpu (JSON written by mem_per_conn.py and
cpu_per_rtt.py --json), or --with-python (runs them here first), it prints
both implementations side by side.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402


def kv(line: str) -> dict[str, str]:
    return dict(re.findall(r"([A-Za-z0-9_/]+)=([-0-9.]+)", line))


def build(outdir: str) -> tuple[str, str]:
    bins = []
    ref = c.find_c_ref()
    for name in ("pingpong_server", "pingpong_client"):
        src = os.path.join(ref, name + ".c")
        exe = os.path.join(outdir, name)
        subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, src], check=True, timeout=120)
        bins.append(exe)
    return bins[0], bins[1]


def src_range(n: int) -> str:
    ips = c.source_ips(n)
    return f"{ips[0]}-{ips[-1]}"


def start_server(srv_bin: str, port: int, ks: int, dur: float, logdir: str, tag: str) -> c.Proc:
    args = [srv_bin, "-a", "127.0.0.1", "-p", str(port), "-k", str(ks), "-D", str(int(dur)), "-S", "1",
            "-P", os.path.join(logdir, f"server-{tag}.pids")]
    srv = c.Proc(f"c-server-{tag}", args, logdir)
    c.wait_until(lambda: srv.tail.matching(r"^SERVER_READY"), 30, "SERVER_READY", [srv])
    return srv


def last_kv(tail: c.LogTail, prefix: str) -> dict[str, str]:
    lines = tail.matching("^" + re.escape(prefix))
    return kv(lines[-1][1]) if lines else {}


def mem_phase(args: argparse.Namespace, srv_bin: str, cli_bin: str, logdir: str) -> dict:
    n = args.connections
    port = c.free_port()
    bound = 60 + 3 * n / args.rate + args.settle
    res: dict = {"bench": "mem_per_conn", "impl": "c", "n": n, "interval": args.mem_interval, "port": port}
    srv = cli = None
    try:
        srv = start_server(srv_bin, port, args.ks, bound + 30, logdir, "mem")
        time.sleep(0.5)
        wait_s = 2.0
        cargs = [cli_bin, "-n", str(n), "-k", str(args.kc), "-s", src_range(n), "-p", str(port),
                 "-i", str(args.mem_interval), "-t", "10", "-r", str(args.rate), "-H", str(args.settle + 3),
                 "-W", str(wait_s), "-D", str(int(bound)), "-P", os.path.join(logdir, "client-mem.pids")]
        res["server_cmd"] = " ".join(srv.args)
        res["client_cmd"] = " ".join(cargs)
        t_start = time.monotonic()
        cli = c.Proc("c-client-mem", cargs, logdir)
        # The launcher writes its pid file after forking; children then sit out -W.
        c.wait_until(lambda: len(c.descendants(cli.pid)) >= args.kc + 1, 5, "client children", [cli])
        time.sleep(0.3)
        if time.monotonic() - t_start > wait_s - 0.5:
            c.log("warning: client baseline read late; it may include a few connections")
        base = {"server": c.tree_rss(srv.pid), "client": c.tree_rss(cli.pid)}
        c.wait_until(lambda: cli.tail.matching(r"^ESTABLISHED"), bound, "ESTABLISHED", [cli])
        res["established_line"] = cli.tail.matching(r"^ESTABLISHED")[0][1]
        c.sleep_polling(args.settle, [srv.tail, cli.tail])
        loaded = {"server": c.tree_rss(srv.pid), "client": c.tree_rss(cli.pid)}
        opened = {"server": int(last_kv(srv.tail, "S t=").get("conns", 0)),
                  "client": int(last_kv(cli.tail, "C t=").get("est", 0))}
        res.update({"baseline_rss": base, "readings": [{
            "label": "loaded", "rss": loaded, "open": opened,
            "server_bytes_per_conn": (loaded["server"] - base["server"]) / max(1, opened["server"]),
            "client_bytes_per_conn": (loaded["client"] - base["client"]) / max(1, opened["client"]),
        }]})
        c.wait_until(lambda: not cli.alive(), args.settle + 30, "the client to finish its hold")
        res["client_summary"] = (cli.tail.matching(r"^CLIENT_SUMMARY") or [(0, None)])[0][1]
    finally:
        c.stop_pair(srv, cli)
    return res


def cpu_phase(args: argparse.Namespace, srv_bin: str, cli_bin: str, logdir: str) -> dict:
    n = args.connections
    port = c.free_port()
    warm = args.warm if args.warm is not None else args.cpu_interval + 3
    hold = warm + args.window + 5
    bound = 60 + 3 * n / args.rate + hold
    res: dict = {"bench": "cpu_per_rtt", "impl": "c", "n": n, "interval": args.cpu_interval,
                 "offered_pings_per_s": n / args.cpu_interval, "port": port}
    srv = cli = None
    try:
        srv = start_server(srv_bin, port, args.ks, bound + 30, logdir, "cpu")
        cargs = [cli_bin, "-n", str(n), "-k", str(args.kc), "-s", src_range(n), "-p", str(port),
                 "-i", str(args.cpu_interval), "-t", "10", "-r", str(args.rate), "-H", str(hold),
                 "-W", "0", "-D", str(int(bound)), "-P", os.path.join(logdir, "client-cpu.pids")]
        res["server_cmd"] = " ".join(srv.args)
        res["client_cmd"] = " ".join(cargs)
        cli = c.Proc("c-client-cpu", cargs, logdir)
        c.wait_until(lambda: cli.tail.matching(r"^ESTABLISHED"), bound, "ESTABLISHED", [cli])
        res["established_line"] = cli.tail.matching(r"^ESTABLISHED")[0][1]
        c.sleep_polling(warm, [srv.tail, cli.tail])
        win = c.CpuWindow({"server": srv.pid, "client": cli.pid})
        t0 = time.monotonic()
        c.sleep_polling(args.window, [srv.tail, cli.tail])
        t1 = time.monotonic()
        cpu = win.finish()
        c.sleep_polling(1.2, [srv.tail, cli.tail])
        lines = [(t, kv(line)) for t, line in cli.tail.matching(r"^C t=")]
        slines = [(t, kv(line)) for t, line in srv.tail.matching(r"^S t=")]

        def rate(ls, key):
            inside = [x for x in ls if t0 <= x[0] <= t1 + 1.1]
            if len(inside) < 2:
                return 0.0, inside
            (ta, a), (tb, b) = inside[0], inside[-1]
            return (int(b[key]) - int(a[key])) / (tb - ta), inside

        pong_rate, used = rate(lines, "pongs_total")
        ping_rate, _ = rate(lines, "pings_total")
        srv_rate, _ = rate(slines, "pongs_total")
        p50 = [float(d["p50_us"]) / 1000 for _, d in used[1:] if float(d.get("p50_us", -1)) >= 0]
        p99 = [float(d["p99_us"]) / 1000 for _, d in used[1:] if float(d.get("p99_us", -1)) >= 0]
        last = lines[-1][1] if lines else {}
        res.update(c.cpu_figures(cpu, pong_rate, ping_rate, srv_rate, p50, p99, {
            "open_at_end": {"server": int(last_kv(srv.tail, "S t=").get("conns", 0)), "client": int(last.get("est", 0))},
            "timeouts": int(last.get("timeouts", 0)), "skipped": int(last.get("skipped", 0)),
        }))
        c.wait_until(lambda: not cli.alive(), hold + 30, "the client to finish its hold")
    finally:
        c.stop_pair(srv, cli)
    return res


def report_c(mem: dict | None, cpu: dict | None) -> None:
    if mem:
        r = mem["readings"][0]
        print()
        print(f"== C reference: user memory per connection, N={mem['n']} interval={mem['interval']:g}s")
        print(f"   server: {mem['server_cmd']}\n   client: {mem['client_cmd']}")
        print(f"   {mem.get('established_line')}")
        for side in ("server", "client"):
            print(f"   {side:<7} RSS {mem['baseline_rss'][side] / 2**20:6.1f} -> {r['rss'][side] / 2**20:6.1f} MiB, "
                  f"open {r['open'][side]}: {r[f'{side}_bytes_per_conn']:.0f} B/conn "
                  f"(README: {c.C_README[f'{side}_user_bytes_per_conn']:.0f} B)")
    if cpu:
        print()
        print(f"== C reference: CPU per round trip, N={cpu['n']} interval={cpu['interval']:g}s "
              f"(offered {cpu['offered_pings_per_s']:.0f} pings/s), window {cpu['window_s']} s")
        print(f"   server: {cpu['server_cmd']}\n   client: {cpu['client_cmd']}")
        print(f"   achieved {cpu['pongs_per_s']:.0f} round trips/s; RTT p50 {c.fmt(cpu['rtt_p50_ms_median'], '.3f')} ms, "
              f"worst 1-s p99 {c.fmt(cpu['rtt_p99_ms_max'], '.3f')} ms; timeouts {cpu['timeouts']}, "
              f"skipped {cpu['skipped']}")
        for side in ("server", "client"):
            print(f"   {side:<7} {cpu[f'{side}_cpu_s']:6.2f} CPU-s ({cpu[f'{side}_core_pct']:5.1f}% of a core) "
                  f"{c.fmt(cpu[f'{side}_us_per_rt'], '.2f')} µs/RT")
        print(f"   both    {c.fmt(cpu['both_us_per_rt'], '.2f')} µs/RT (README: ~{c.C_README['both_us_per_rt']:g} µs at "
              f"20k pings/s, 8+6 processes, reference box)")
        print(f"   machine: {cpu['machine_busy_s']:.1f} CPU-s busy of {cpu['window_s'] * cpu['machine_cores']:.0f}; "
              f"not ours: {cpu['others_cpu_s']} CPU-s")


def side_by_side(py_mem: dict | None, py_cpu: dict | None, c_mem: dict | None, c_cpu: dict | None) -> None:
    rows: list[tuple[str, float | None, float | None, float | None, str]] = []

    def ratio(a, b):
        return a / b if a is not None and b not in (None, 0) else None

    if py_mem or c_mem:
        pm = py_mem["readings"][0] if py_mem else {}
        cm = c_mem["readings"][0] if c_mem else {}
        for side in ("server", "client"):
            rows.append((f"{side} user B/conn", pm.get(f"{side}_bytes_per_conn"), cm.get(f"{side}_bytes_per_conn"),
                         c.C_README[f"{side}_user_bytes_per_conn"], ".0f"))
    if py_cpu or c_cpu:
        pc, cc = py_cpu or {}, c_cpu or {}
        rows.append(("round trips/s achieved", pc.get("pongs_per_s"), cc.get("pongs_per_s"), None, ".0f"))
        for side in ("server", "client", "both"):
            rows.append((f"µs CPU/RT {side}", pc.get(f"{side}_us_per_rt"), cc.get(f"{side}_us_per_rt"),
                         c.C_README["both_us_per_rt"] if side == "both" else None, ".1f"))
        rows.append(("RTT p50 ms", pc.get("rtt_p50_ms_median"), cc.get("rtt_p50_ms_median"), None, ".3f"))
    n = (py_mem or py_cpu or c_mem or c_cpu or {}).get("n")
    print()
    print(f"== side by side on this machine (N={n}; memory at interval 60 s, CPU at interval 1 s)")
    print(f"   {'':<24} {'Python':>10} {'C here':>10} {'Python/C':>9} {'C README':>9} {'Py/README':>9}")
    for name, py, cv, readme, spec in rows:
        print(f"   {name:<24} {c.fmt(py, spec):>10} {c.fmt(cv, spec):>10} {c.fmt_ratio(ratio(py, cv)):>9} "
              f"{c.fmt(readme, spec):>9} {c.fmt_ratio(ratio(py, readme)):>9}")
    if py_mem:
        pm = py_mem["readings"][0]
        b = c.BUDGET_BYTES_PER_CONN
        print(f"   memory budget {b:.0f} B/conn/side: Python server {pm['server_bytes_per_conn'] / b:.2f}x, "
              f"client {pm['client_bytes_per_conn'] / b:.2f}x of budget")
    if py_cpu and c_cpu and py_cpu.get("both_us_per_rt") and c_cpu.get("both_us_per_rt"):
        r = py_cpu["both_us_per_rt"] / c_cpu["both_us_per_rt"]
        print(f"   CPU target (within {c.CPU_TARGET_FACTOR:g}x of C): {r:.1f}x against C here -> "
              f"{'met' if r <= c.CPU_TARGET_FACTOR else 'NOT met'}")


def load_json(path: str | None) -> dict | None:
    if not path:
        return None
    import json

    with open(path) as f:
        return json.load(f)


def main() -> None:
    ap = c.bench_parser(__doc__)
    ap.add_argument("--rate", type=float, default=5000.0, help="connects per second (default 5000)")
    ap.add_argument("--mem-interval", type=float, default=60.0, help="ping interval for the memory run (60)")
    ap.add_argument("--cpu-interval", type=float, default=1.0, help="ping interval for the CPU run (1)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds after all open before reading RSS (3)")
    ap.add_argument("--warm", type=float, default=None, help="seconds before the CPU window (interval+3)")
    ap.add_argument("--window", type=float, default=20.0, help="CPU window, seconds (default 20)")
    ap.add_argument("-ks", type=int, default=1, help="server worker processes (default 1)")
    ap.add_argument("-kc", type=int, default=1, help="client processes (default 1)")
    ap.add_argument("--only", choices=("mem", "cpu"), help="run only one of the two measurements")
    ap.add_argument("--python-mem", help="JSON from mem_per_conn.py --json, for the side-by-side table")
    ap.add_argument("--python-cpu", help="JSON from cpu_per_rtt.py --json, for the side-by-side table")
    ap.add_argument("--with-python", action="store_true", help="run the two Python benches first, same N")
    ap.add_argument("--json", help="write the C results here as JSON")
    args = c.parse_bench_args(ap, lambda a: c.MAX_CONNS * a.kc, "per client process")
    if not shutil.which("gcc"):
        raise SystemExit("gcc not found")

    py_mem, py_cpu = load_json(args.python_mem), load_json(args.python_cpu)
    if args.with_python:
        import cpu_per_rtt
        import mem_per_conn

        if args.only in (None, "mem"):
            py_mem = mem_per_conn.run(argparse.Namespace(
                connections=args.connections, rate=args.rate, interval=args.mem_interval, settle=args.settle,
                after_ping=False, port=0))
            mem_per_conn.report(py_mem)
        if args.only in (None, "cpu"):
            py_cpu = cpu_per_rtt.run(argparse.Namespace(
                connections=args.connections, interval=args.cpu_interval, timeout=10.0, rate=args.rate,
                warm=args.warm if args.warm is not None else args.cpu_interval + 3, window=args.window,
                server_workers=0, client_workers=0, profile=False, port=0))
            cpu_per_rtt.report(py_cpu)

    logdir = tempfile.mkdtemp(prefix="connscale-bench-cref-")
    c.log(f"c_reference: building into {logdir}")
    srv_bin, cli_bin = build(logdir)
    c_mem = c_cpu = None
    if args.only in (None, "mem"):
        c.log(f"c_reference: memory run, N={args.connections}, interval {args.mem_interval:g} s")
        c_mem = mem_phase(args, srv_bin, cli_bin, logdir)
    if args.only in (None, "cpu"):
        c.log(f"c_reference: CPU run, N={args.connections}, interval {args.cpu_interval:g} s")
        c_cpu = cpu_phase(args, srv_bin, cli_bin, logdir)
    report_c(c_mem, c_cpu)
    if py_mem or py_cpu:
        side_by_side(py_mem, py_cpu, c_mem, c_cpu)
    c.dump_json(args.json, {"mem": c_mem, "cpu": c_cpu, "logdir": logdir})


if __name__ == "__main__":
    main()
