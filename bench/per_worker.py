#!/usr/bin/env python3
"""One worker under a million's per-worker load, beside the C program doing the same.

At 1,000,000 connections, interval 60 s, each of ~53 workers per side holds
~19,000 connections and carries ~317 pings a second: almost every wake-up
handles one event. This bench isolates what such a wake-up costs:

  server   one real connscale server worker (`python -m connscale.procs.worker
           server SPEC`, PB on its pipes, asked for a snapshot once a second as
           its supervisor does), pinged by the C client (one process, -n N -i 60);
           the C column is the C server (-k 1) pinged the same way
  client   one real connscale client worker holding N connections (ordered
           over PB as an agent orders it) against the C server (-k 1); the C
           column is the C client (-k 1) against the same server

Over --window seconds after every connection has pinged once it reads, from
/proc/PID/schedstat of the measured process: CPU µs per ping (run time / pings
in the window), wake-ups per second (times scheduled), run-queue wait per
second; and the RTT per second as the client side saw it (the C client's lines,
or the connscale client worker's own buckets).

    python3 bench/per_worker.py --role server                 # connscale (fast path) and C
    python3 bench/per_worker.py --role both --variants fast,stock,c
    CONNSCALE_C_REF=... python3 bench/per_worker.py -n 19000 --window 30

Loopback only; every process is started here and stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

#: The parent of a connscale worker: spawns it with PB on its pipes, orders it
#: (client), asks for a snapshot once a second, prints each answer's RTT figures.
PARENT = r"""
import json, sys, time
from twisted.internet import reactor, task
from connscale.records.packed import pack, unpack
from connscale.metrics.buckets import RttBuckets, lowest
from connscale.procs.childproc import PBChild, spawn_python

role, spec, order, limit = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
child = PBChild("measured", lambda c, r: reactor.callLater(0, reactor.stop))
spawn_python(reactor, "connscale.procs.worker", [role, spec], child)

def pct(b, q):
    vals = b.values()
    total = sum(n for _, n in vals)
    if not total:
        return None
    seen = 0
    for v, n in vals:
        seen += n
        if seen >= q * total:
            return v / 1000.0
    return vals[-1][0] / 1000.0

def got(text):
    snap = unpack(text)
    b = RttBuckets()
    if snap.get("rtt"):
        b.add_encoded(snap["rtt"])
    print(json.dumps({"t": time.time(), "pings": snap["pings"], "pongs": snap["pongs"], "open": snap["open"],
                      "p50": pct(b, 0.5), "p99": pct(b, 0.99), "load": snap.get("load")}), flush=True)

def ready(info):
    print(json.dumps({"pid": info["pid"]}), flush=True)
    if order != "-":
        child.call("set_target_packed", pack(json.loads(order)))
    task.LoopingCall(lambda: child.call("snapshot_packed").addCallback(got).addErrback(lambda f: None)).start(1.0)

child.ready.addCallback(ready)
reactor.callLater(limit, reactor.stop)
reactor.run()
"""


def schedstat(pid: int) -> tuple[float, float, int]:
    """(run s, run-queue wait s, times scheduled)."""
    with open(f"/proc/{pid}/schedstat") as f:
        run_ns, wait_ns, slices = f.read().split()[:3]
    return int(run_ns) / 1e9, int(wait_ns) / 1e9, int(slices)


def threads_schedstat(pid: int) -> tuple[float, float, int]:
    """schedstat summed over every thread of `pid` (the C programs are single-threaded)."""
    return schedstat(pid)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="connscale-per-worker-")
        ref = c.find_c_ref()
        self.bins: dict[str, str] = {}
        for name in ("pingpong_server", "pingpong_client"):
            exe = os.path.join(self.dir, name)
            subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, os.path.join(ref, name + ".c")], check=True,
                           timeout=120)
            self.bins[name] = exe
        self.repo = c.REPO

    # -- the processes ---------------------------------------------------------
    def c_server(self, port: int) -> c.Proc:
        srv = c.Proc("c-server", [self.bins["pingpong_server"], "-a", "127.0.0.1", "-p", str(port), "-k", "1",
                                  "-D", "600", "-S", "1"], self.dir)
        c.wait_until(lambda: srv.tail.matching(r"^SERVER_READY"), 30, "SERVER_READY", [srv])
        return srv

    def c_client(self, port: int, n: int) -> c.Proc:
        return c.Proc("c-client", [self.bins["pingpong_client"], "-n", str(n), "-k", "1", "-s",
                                   "127.0.0.2-127.0.0.3", "-p", str(port), "-i", "60", "-t", "10", "-r", "5000",
                                   "-c", "20", "-H", "600", "-W", "0.5", "-D", "600", "-m", "14"], self.dir)

    def worker(self, role: str, port: int, n: int, mode: str) -> c.Proc:
        if role == "server":
            spec: dict[str, Any] = {"ports": [port], "name": "measured", "backlog": 4096}
            order = "-"
        else:
            spec = {"interval": 60.0, "timeout": 10.0, "rate": 5000.0, "close": "rst", "name": "measured"}
            routes = [[f"127.0.0.{2 + i}", "127.0.0.1", port, 14000] for i in range(2)]
            order = json.dumps({"target": n, "routes": routes, "rate": 5000.0})
        if mode == "stock":
            # A worker takes the path from its spec (its parent applied the switch).
            spec["fast_path"] = False
        env = {"PYTHONPATH": self.repo + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if mode in ("fast", "stock"):
            env["CONNSCALE_FAST_PATH"] = "1" if mode == "fast" else "0"
        limit = self.args.window + 60 + 30
        return c.Proc(f"cs-{role}-{mode}", [sys.executable, "-c", PARENT, role, json.dumps(spec), order,
                                            str(limit)], self.dir, env=env)

    # -- where the CPU goes ----------------------------------------------------------
    def profile(self, role: str, mode: str, pid: int, window: float) -> subprocess.Popen[bytes] | None:
        """`perf record` (software clock, so it works in a VM) of `pid` over the window,
        or with --pyspy (a connscale worker) py-spy's Python stacks."""
        if self.args.pyspy and mode != "c":
            here = os.path.join(os.path.dirname(sys.executable), "py-spy")  # pip installs it beside python
            return subprocess.Popen([here if os.path.exists(here) else "py-spy", "record", "-r", "250", "-d", str(int(window)), "-f", "raw", "-o",
                                     _perf_path(self, role, mode) + ".raw", "-p", str(pid), "--nonblocking"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not self.args.perf:
            return None
        return subprocess.Popen(["perf", "record", "-q", "-F", "2999", "-e", "cpu-clock", "-p", str(pid), "-o",
                                 _perf_path(self, role, mode), "--", "sleep", str(window)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def perf_split(self, role: str, mode: str) -> dict[str, float]:
        """Share of the samples in the kernel, in the interpreter and in the rest (libc, ...);
        with --pyspy, the share of each activity of the worker's Python."""
        if self.args.pyspy and mode != "c":
            return activities(_perf_path(self, role, mode) + ".raw")
        out = subprocess.run(["perf", "report", "-q", "-i", _perf_path(self, role, mode), "--stdio", "--sort",
                              "dso"], capture_output=True, text=True, timeout=120).stdout
        split: dict[str, float] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith("%"):
                dso = parts[1]
                kind = "kernel" if "kernel" in dso else "python" if "python" in dso or "libpython" in dso \
                    else "c" if "pingpong" in dso else "other"
                split[kind] = round(split.get(kind, 0.0) + float(parts[0][:-1]), 1)
        return split

    # -- one measurement -----------------------------------------------------------
    def one(self, role: str, mode: str) -> dict[str, Any]:
        n, window = self.args.connections, self.args.window
        port = c.free_port()
        procs: list[c.Proc] = []
        res: dict[str, Any] = {"role": role, "variant": mode, "n": n}
        try:
            if role == "server":
                if mode == "c":
                    srv = self.c_server(port)
                    procs.append(srv)
                    # The C server's one worker process, not its parent.
                    c.wait_until(lambda: len(c.descendants(srv.pid)) > 1, 10, "the C server's child", [srv])
                    measured = [p for p in c.descendants(srv.pid) if p != srv.pid][0]
                else:
                    srv = self.worker("server", port, n, mode)
                    procs.append(srv)
                    first = c.wait_until(lambda: srv.tail.matching(r'^\{"pid"'), 30, "the worker", [srv])
                    measured = json.loads(first[0][1])["pid"]
                    time.sleep(0.5)
                cli = self.c_client(port, n)
                procs.append(cli)
                c.wait_until(lambda: cli.tail.matching(r"^ESTABLISHED"), 60, "ESTABLISHED", [cli])
            else:
                srv = self.c_server(port)
                procs.append(srv)
                if mode == "c":
                    cli = self.c_client(port, n)
                    procs.append(cli)
                    c.wait_until(lambda: len(c.descendants(cli.pid)) > 1, 10, "the C client's child", [cli])
                    measured = [p for p in c.descendants(cli.pid) if p != cli.pid][0]
                    c.wait_until(lambda: cli.tail.matching(r"^ESTABLISHED"), 60, "ESTABLISHED", [cli])
                else:
                    cli = self.worker("client", port, n, mode)
                    procs.append(cli)
                    first = c.wait_until(lambda: cli.tail.matching(r'^\{"pid"'), 30, "the worker", [cli])
                    measured = json.loads(first[0][1])["pid"]
                    c.wait_until(lambda: any(json.loads(l).get("open", 0) >= n for _, l in
                                             cli.tail.matching(r'^\{"t"')), 60, f"{n} open", [cli])
            # Every connection pings once per 60 s from a random offset: wait a whole interval.
            c.sleep_polling(self.args.warm, [p.tail for p in procs])
            (r0, w0, s0), t0 = schedstat(measured), time.monotonic()
            lines0 = len(cli.tail.matching(r"^(C t=|\{\"t\")"))
            profiler = self.profile(role, mode, measured, window)
            c.sleep_polling(window, [p.tail for p in procs])
            if profiler is not None:
                profiler.wait(30)
                res["perf" if not self.args.pyspy else "activities"] = self.perf_split(role, mode)
            (r1, w1, s1), t1 = schedstat(measured), time.monotonic()
            lines = cli.tail.matching(r"^(C t=|\{\"t\")")[lines0:]
            dt = t1 - t0
            if mode == "c" or role == "server":
                per_s = [c_line(line) for _, line in lines if line.startswith("C t=")]
                pings = sum(p["pongs/s"] for p in per_s)  # one line a second
                p50 = [p["p50_us"] / 1000 for p in per_s]
                p99 = [p["p99_us"] / 1000 for p in per_s]
            else:
                snaps = [json.loads(line) for _, line in cli.tail.matching(r'^\{"t"')]
                inside = [s for s in snaps if s["t"] >= time.time() - dt]
                pings = (inside[-1]["pongs"] - inside[0]["pongs"]) * dt / max(1e-9, inside[-1]["t"] - inside[0]["t"])
                p50 = [s["p50"] for s in inside if s["p50"] is not None]
                p99 = [s["p99"] for s in inside if s["p99"] is not None]
            res.update({
                "window_s": round(dt, 1),
                "pings_per_s": round(pings / dt, 1),
                "cpu_ms_per_s": round((r1 - r0) / dt * 1000, 2),
                "cpu_us_per_ping": round((r1 - r0) * 1e6 / max(1.0, pings), 1),
                "wakeups_per_s": round((s1 - s0) / dt, 1),
                "events_per_wakeup": round(pings / max(1, s1 - s0), 2),
                "runq_wait_ms_per_s": round((w1 - w0) / dt * 1000, 2),
                "rtt_p50_ms_median": round(statistics.median(p50), 3) if p50 else None,
                "rtt_p99_ms_median": round(statistics.median(p99), 3) if p99 else None,
                "rtt_p99_ms_worst": round(max(p99), 3) if p99 else None,
            })
        finally:
            for p in reversed(procs):
                p.stop(10)
        return res


#: What a worker does, recognised by the innermost frame of a stack that names it
#: (py-spy's raw stacks run from the outermost frame to the innermost).
ACTIVITIES = (
    ("probe (load.py, 4 Hz)", ("(connscale/metrics/load.py:",)),
    ("snapshot (PB over stdio)", ("remote_snapshot", "(twisted/spread/", "(connscale/procs/childproc.py:",
                                  "(twisted/internet/process.py:", "(twisted/internet/_posixstdio.py:",
                                  "(connscale/records/packed.py:", "(connscale/metrics/buckets.py:",
                                  "(connscale/host/resources.py:")),
    ("client: ping sends (wheel tick)", ("timer (connscale/net/pool.py:", "_fire (connscale/net/wheel.py:")),
    ("client: pongs timed (pool.pong)", ("pong (connscale/net/pool.py:",)),
    ("protocol (wire.py: a ping answered, a pong parsed)", ("(connscale/net/wire.py:", "(connscale/compat/lines.py:")),
    ("transport (read/write calls)", ("(connscale/net/transport.py:", "(connscale/net/connector.py:",
                                      "(connscale/net/port.py:")),
    ("Twisted timers (runUntilCurrent)", ("runUntilCurrent",)),
    ("loop (turn, epoll_wait, dispatch)", ("(connscale/net/dispatch.py:", "(connscale/compat/epoll.py:")),
)


def activities(raw: str) -> dict[str, float]:
    """py-spy raw output -> share (%) of the samples per activity."""
    counts: dict[str, int] = {}
    total = 0
    try:
        lines = open(raw).read().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = stack.split(";")
        name = "other"
        for label, marks in ACTIVITIES:
            if any(m in f for f in frames for m in marks):
                name = label
                break
        counts[name] = counts.get(name, 0) + int(n)
        total += int(n)
    return {k: round(100 * v / total, 1) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])} if total else {}


def _perf_path(bench: Bench, role: str, mode: str) -> str:
    return os.path.join(bench.dir, f"perf-{role}-{mode}.data")


def c_line(line: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"([A-Za-z0-9_/]+)=([-0-9.]+)", line)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--connections", type=int, default=19_000, help="connections (19,000: a million's worker)")
    ap.add_argument("--role", choices=("server", "client", "both"), default="both")
    ap.add_argument("--variants", default="fast,c", help="comma list of fast, stock (connscale's two modes), c")
    ap.add_argument("--warm", type=float, default=62.0, help="seconds after all are open (one interval + 2)")
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--perf", action="store_true", help="perf record the measured process: kernel vs user share")
    ap.add_argument("--pyspy", action="store_true", help="py-spy the connscale worker: its Python by activity")
    args = ap.parse_args()
    c.stop_on_signals()
    bench = Bench(args)
    roles = ("server", "client") if args.role == "both" else (args.role,)
    results = []
    print(f"{'role':7s} {'variant':8s} {'pings/s':>8s} {'CPU ms/s':>9s} {'µs/ping':>8s} {'wakes/s':>8s} "
          f"{'ev/wake':>8s} {'runq ms/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'p99 max':>8s}", flush=True)
    for role in roles:
        for mode in args.variants.split(","):
            r = bench.one(role, mode)
            results.append(r)
            print(f"{role:7s} {mode:8s} {r.get('pings_per_s', 0):>8.0f} {r.get('cpu_ms_per_s', 0):>9.2f} "
                  f"{r.get('cpu_us_per_ping', 0):>8.1f} {r.get('wakeups_per_s', 0):>8.0f} "
                  f"{r.get('events_per_wakeup', 0):>8.2f} {r.get('runq_wait_ms_per_s', 0):>9.2f} "
                  f"{c.fmt(r.get('rtt_p50_ms_median'), '.3f'):>7s} {c.fmt(r.get('rtt_p99_ms_median'), '.2f'):>7s} "
                  f"{c.fmt(r.get('rtt_p99_ms_worst'), '.2f'):>8s}  {r.get('perf') or r.get('activities') or ''}", flush=True)
    c.dump_json(args.json, {"results": results})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
