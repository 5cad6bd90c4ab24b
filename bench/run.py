#!/usr/bin/env python3
"""bench/run: connscale beside the C reference, on this machine, one after the other.

    bench/run --quick        # <= 20,000 connections, under 3 minutes
    bench/run --full         # 1,000,000 connections, under 20 minutes (announce it: ~15 GB)
    bench/run --quick --only connscale      # one side (ratios need both)
    bench/run --quick --fast-path off       # connscale on Twisted's own transports

`bench/run` is a thin executable; this module (`bench/run.py`) holds the
harness, so other benches and tests can import its figures (`ramp_figures`,
`hold_figures`, `c_figures`).

For each implementation it measures (loopback only; every process started
here is stopped by its pid, every wait has a deadline, and a memory guard
stops a phase when MemAvailable falls below --min-available GiB):

  (a) held         connections held for the final hold (60 s; 10 s with --quick) at
                   interval 60 s with 0 failures (connscale: `connscale run -c
                   bench/million.yaml`, --target for --quick)
  (f) connect_rate average connect rate of the ramp to that count
  (g) hold_rtt     RTT p50/p99 over the final hold
  (b) mem_per_conn user memory per connection per side: the workers' RSS with N
                   connections (all pinged once) above their 1-connection baseline
  (c) worker_baseline_rss  a worker's RSS with one connection
  (d) cpu_us_per_rt        CPU µs per round trip, both sides, at N_cpu connections
                   and 20,000 pings/s (connscale: hub, agent and the workers
                   `connscale run` would start; C: 8 server + 6 client processes)
  (e) max_pings_per_s      the highest ping rate held 30 s (8 s with --quick) with
                   RTT p99 < 50 ms, no failure and >= 95 % of the pings answered

With --full, the million (a) is also timed per second on both sides, both asked
the same connect rate (scenario.rate of bench/million.yaml, 15,000/s): ramp_rate,
ramp_first_step_rate, ramp_last_step_rate, ramp_p99_ms (median of the ramp's
seconds), hold_p50_ms and hold_p99_ms ({"median", "worst"} over the hold's
seconds), hold_cpu_cores (every process of the implementation over the final
hold, sampled from /proc), user_mem_bytes (their RSS at the hold), and for
connscale the CPU per kind of process (run, hub, agent, server and client workers).

The last line is one JSON object: {"connscale": {...}, "c": {...}, "ratio": {...}}.
Figures and their meaning: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _common as c  # noqa: E402

REPO = c.REPO
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from connscale.diagnose.records import Summary, read_summary  # noqa: E402
from connscale.metrics.records import Stats  # noqa: E402
from connscale.metrics.timeline import TIMELINE_FILE  # noqa: E402
from connscale.host.inventory import read_meminfo  # noqa: E402
from connscale.metrics.timeline import read_timeline as read_records  # noqa: E402

KEYS = ("held", "mem_per_conn_server", "mem_per_conn_client", "worker_baseline_rss", "cpu_us_per_rt",
        "max_pings_per_s", "connect_rate", "hold_rtt_p99_ms")
#: The million's figures, per second (both modes report them; issue 21 reads them at a million).
MILLION_KEYS = ("ramp_rate", "ramp_first_step_rate", "ramp_last_step_rate", "ramp_p99_ms", "hold_p50_ms",
                "hold_p99_ms", "hold_cpu_cores", "user_mem_bytes")

MODES: dict[str, dict[str, Any]] = {
    "quick": {"max_n": 20_000, "hold": 10, "mem_n": 20_000, "cpu_window": 10, "rate_n": 20_000,
              "rate_window": 8, "rates": [25_000, 50_000], "budget": 175},
    "full": {"max_n": 1_000_000, "hold": 60, "mem_n": 100_000, "cpu_window": 20, "rate_n": 100_000,
             "rate_window": 30, "rates": [35_000, 50_000, 65_000, 80_000], "budget": 890},
}
CPU_PINGS = 20_000
RTT_P99_LIMIT_MS = 50.0


class GuardTripped(Exception):
    """The memory guard stopped a phase."""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mode = MODES["full" if args.full else "quick"]
        self.deadline = time.monotonic() + self.mode["budget"]
        self.dir = tempfile.mkdtemp(prefix="connscale-bench-run-")
        self.min_available = args.min_available * 2**30
        self.notes: list[str] = []
        self.secret = secrets.token_urlsafe(24)

    # -- bounds ------------------------------------------------------------------
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def guard(self) -> None:
        avail = read_meminfo().get("MemAvailable", 0)
        if avail < self.min_available:
            raise GuardTripped(f"MemAvailable {avail / 2**30:.1f} GiB < {self.args.min_available:g} GiB")

    def wait(self, pred: Callable[[], Any], timeout: float, what: str, procs: list[c.Proc] = ()) -> Any:
        end = time.monotonic() + min(timeout, max(1.0, self.left()))
        while True:
            value = pred()
            if value:
                return value
            self.guard()
            for p in procs:
                if not p.alive():
                    raise RuntimeError(f"{p.name} exited (rc {p.p.returncode}) waiting for {what}:\n{p.last_lines()}")
            if time.monotonic() > end:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.guard()
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))


# -- /proc -------------------------------------------------------------------------




def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        return ""


def workers_of(root: int, role: str) -> list[int]:
    return [p for p in c.descendants(root) if f"connscale.procs.worker {role}" in cmdline(p)]


def children_of(root: int) -> list[int]:
    return [p for p in c.descendants(root) if p != root]


def free_ports(n: int, lo: int, hi: int) -> int:
    """First of `n` consecutive free ports in [lo, hi) (below the ephemeral range)."""
    import random

    for _ in range(300):
        base = random.randrange(lo, hi - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise SystemExit("no free port range found")


def layout(n: int) -> tuple[int, int]:
    """(source IPs, server ports) as the C reference's harness uses them."""
    return (20, 10) if n <= 100_000 else (40, 16)


# -- every process of a run, once a second ------------------------------------------


def connscale_kind(cmd: str) -> str:
    """Which part of a `connscale run` a process is, from its command line."""
    if "connscale.procs.worker server" in cmd:
        return "server_workers"
    if "connscale.procs.worker client" in cmd:
        return "client_workers"
    if "-m connscale server" in cmd:
        return "hub"
    if "-m connscale agent" in cmd:
        return "agent"
    if "-m connscale run" in cmd:
        return "run"  # the run itself: its scenario, stats poll and live view
    return "other"


def c_kind(cmd: str) -> str:
    return "c_server" if "pingpong_server" in cmd else "c_client" if "pingpong_client" in cmd else "other"


class TreeSampler:
    """CPU ticks and RSS of every process below `roots`, sampled once a second
    by a thread (wall and monotonic time of each sample), grouped by `kind(cmdline)`."""

    def __init__(self, roots: list[int], kind: Callable[[str], str], every: float = 1.0) -> None:
        import threading

        self.roots, self.kind, self.every = roots, kind, every
        self.samples: list[tuple[float, float, dict[int, tuple[str, int, int]], dict[str, int]]] = []
        self._kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TreeSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        procs: dict[int, tuple[str, int, int]] = {}
        for root in self.roots:
            for pid in c.descendants(root):
                f = c.stat_fields(pid)
                if not f:
                    continue
                kind = self._kinds.get(pid)
                if kind is None:
                    kind = self.kind(cmdline(pid))
                    # A child just forked still shows its parent's command line:
                    # only a worker's (which it keeps) is remembered.
                    if kind.endswith("workers") or kind.startswith("c_"):
                        self._kinds[pid] = kind
                procs[pid] = (kind, int(f[11]) + int(f[12]), int(f[21]) * c.PAGE)
        self.samples.append((time.time(), time.monotonic(), procs, c.machine_cpu()))

    def _nearest(self, t: float, wall: bool) -> int:
        key = 0 if wall else 1
        return min(range(len(self.samples)), key=lambda i: abs(self.samples[i][key] - t))

    def window(self, t0: float, t1: float, wall: bool = True) -> dict[str, Any]:
        """CPU cores per kind between the samples nearest t0 and t1, the machine's
        busy cores and everyone else's, and RSS per kind at t1."""
        if len(self.samples) < 2:
            return {}
        i0, i1 = self._nearest(t0, wall), self._nearest(t1, wall)
        if i1 <= i0:
            return {}
        (w0, _, p0, m0), (w1, _, p1, m1) = self.samples[i0], self.samples[i1]
        dt = w1 - w0
        # Each process's last reading inside the window: one that ended before
        # its end keeps the CPU it had used (one born inside counts from zero).
        last: dict[int, tuple[str, int, int]] = {}
        for _, _, procs, _ in self.samples[i0:i1 + 1]:
            last.update(procs)
        cores: dict[str, float] = {}
        count: dict[str, int] = {}
        rss: dict[str, int] = {}
        for pid, (kind, ticks, _) in last.items():
            before = p0.get(pid, (kind, 0, 0))[1]
            cores[kind] = cores.get(kind, 0.0) + (ticks - before) / c.HZ / dt
        for pid, (kind, _, mem) in p1.items():
            count[kind] = count.get(kind, 0) + 1
            rss[kind] = rss.get(kind, 0) + mem
        busy = sum(m1[k] - m0[k] for k in m1 if k not in ("idle", "iowait")) / c.HZ / dt
        total = sum(cores.values())
        return {"seconds": round(dt, 1), "cores": {k: round(v, 3) for k, v in sorted(cores.items())},
                "total_cores": round(total, 3), "processes": count, "rss_bytes": rss,
                "total_rss_bytes": sum(rss.values()), "machine_busy_cores": round(busy, 3),
                # Loopback's receive work runs as softirq: in the process that sent when it can,
                # in ksoftirqd (not ours, by this count) when the box is busy.
                "softirq_cores": round((m1["softirq"] - m0["softirq"]) / c.HZ / dt, 3),
                "others_cores": round(max(0.0, busy - total), 3)}


def spread(values: list[float]) -> dict[str, float | None]:
    """{"median", "worst"} of per-second figures."""
    return {"median": statistics.median(values) if values else None, "worst": max(values) if values else None}


def c_figures(lines: list[tuple[float, str]], n: int) -> dict[str, Any]:
    """The C client's per-second lines: the ramp (before ESTABLISHED) and the hold.

    Steps: the ramp cut in quarters of `n` (connscale's million ramps in 4 steps
    of n/4), each quarter's rate from the seconds that crossed it."""
    ramp: list[dict[str, float]] = []
    hold: list[dict[str, float]] = []
    established = False
    for _, line in lines:
        if line.startswith("ESTABLISHED"):
            established = True
        elif line.startswith("HOLD_DONE"):
            break
        elif line.startswith("C t="):
            f = {k: float(v) for k, v in kv(line).items()}
            (hold if established else ramp).append(f)
    out: dict[str, Any] = {}
    p99 = [r["p99_us"] / 1000 for r in ramp if r.get("conn/s", 0) > 0 and r.get("pongs/s", 0) > 0]
    out["ramp_p99_ms"] = statistics.median(p99) if p99 else None
    out["ramp_p99_ms_worst"] = max(p99) if p99 else None
    if ramp and ramp[0]["est"] > 0:
        ramp.insert(0, {"t": ramp[0]["t"] - 1.0, "est": 0.0})  # the line before the first connect
    steps = []
    for q in range(4):
        lo, hi = n * q / 4, n * (q + 1) / 4
        before = [r for r in ramp if r["est"] <= lo]
        after = [r for r in ramp if r["est"] >= hi * 0.999] or ramp[-1:]
        if before and after and after[0]["t"] > before[-1]["t"]:
            a, b = before[-1], after[0]
            steps.append((b["est"] - a["est"]) / (b["t"] - a["t"]))
    if steps:
        out["ramp_steps"] = steps
        out["ramp_first_step_rate"], out["ramp_last_step_rate"] = steps[0], steps[-1]
    # The hold's own seconds: the first line after ESTABLISHED still covers the ramp's end.
    hold = hold[1:]
    out["hold_p50_ms"] = spread([h["p50_us"] / 1000 for h in hold if h.get("pongs/s", 0) > 0])
    out["hold_p99_ms"] = spread([h["p99_us"] / 1000 for h in hold if h.get("pongs/s", 0) > 0])
    out["hold_seconds"] = len(hold)
    return out


def hold_figures(recs: list[Stats]) -> dict[str, Any]:
    """Per-second RTT of connscale's final hold from its timeline, and its wall times."""
    hold = [r for r in recs if r.phase == "final_hold"]
    # The first line of the hold covers the last second of the ramp.
    hold = hold[1:]
    win = [r.rtt_window_ms for r in hold if r.rtt_window_ms is not None]
    return {
        "hold_p50_ms": spread([w.p50 for w in win if w.p50 is not None]),
        "hold_p99_ms": spread([w.p99 for w in win if w.p99 is not None]),
        "hold_seconds": len(hold),
        "hold_t": (hold[0].t or 0.0, hold[-1].t or 0.0) if hold else None,
    }


def cpu_fields(out: dict[str, Any], win: dict[str, Any]) -> None:
    """hold_cpu_cores, user_mem_bytes and the breakdown, from a sampler's window."""
    if not win:
        return
    out["hold_cpu_cores"] = win["total_cores"]
    out["hold_cpu_by_kind"] = win["cores"]
    out["user_mem_bytes"] = win["total_rss_bytes"]
    out["user_mem_by_kind"] = win["rss_bytes"]
    out["processes"] = win["processes"]
    out["hold_machine_busy_cores"] = win["machine_busy_cores"]
    out["hold_others_cores"] = win["others_cores"]
    out["hold_softirq_cores"] = win["softirq_cores"]
    out["hold_cpu_window_s"] = win["seconds"]


# -- the C reference ---------------------------------------------------------------


def kv(line: str) -> dict[str, str]:
    return dict(re.findall(r"([A-Za-z0-9_/]+)=([-0-9.]+)", line))


class CRef:
    def __init__(self, bench: Bench) -> None:
        self.b = bench
        out = os.path.join(bench.dir, "cbin")
        os.makedirs(out, exist_ok=True)
        import subprocess

        ref = c.find_c_ref()
        self.bins = {}
        for name in ("pingpong_server", "pingpong_client"):
            exe = os.path.join(out, name)
            subprocess.run(["gcc", "-O2", "-Wall", "-o", exe, os.path.join(ref, name + ".c")], check=True, timeout=120)
            self.bins[name] = exe

    def server(self, tag: str, ports: str, k: int, dur: float) -> c.Proc:
        args = [self.bins["pingpong_server"], "-a", "127.0.0.1", "-p", ports, "-k", str(k), "-D", str(int(dur)),
                "-S", "1", "-P", os.path.join(self.b.dir, f"c-{tag}-server.pids")]
        srv = c.Proc(f"c-{tag}-server", args, self.b.dir)
        self.b.wait(lambda: srv.tail.matching(r"^SERVER_READY"), 30, "SERVER_READY", [srv])
        return srv

    def client(self, tag: str, n: int, k: int, srcs: str, ports: str, interval: float, hold: float,
               rate: float, wait: float = 0.0, dur: float = 600) -> c.Proc:
        args = [self.bins["pingpong_client"], "-n", str(n), "-k", str(k), "-s", srcs, "-p", ports,
                "-i", f"{interval:g}", "-t", "10", "-r", str(int(rate)), "-c", "20", "-H", str(int(hold)),
                "-W", f"{wait:g}", "-D", str(int(dur)), "-m", str(self.b.args.c_memguard),
                "-P", os.path.join(self.b.dir, f"c-{tag}-client.pids")]
        return c.Proc(f"c-{tag}-client", args, self.b.dir)

    @staticmethod
    def ranges(n: int, port0: int) -> tuple[str, str]:
        nsrc, nports = layout(n)
        return f"127.0.0.2-127.0.0.{1 + nsrc}", f"{port0}-{port0 + nports - 1}"

    def max_phase(self, n: int, hold: float, rate: float) -> dict[str, Any]:
        port0 = free_ports(16, 11000, 11990)
        srcs, ports = self.ranges(n, port0)
        ks, kc = (64, 56) if n > 100_000 else (max(2, math.ceil(n / 16000)), max(1, math.ceil(n / 18000)))
        res: dict[str, Any] = {"n": n, "rate_asked": rate}
        srv = cli = None
        sampler = None
        try:
            srv = self.server("max", ports, ks, hold + 400)
            cli = self.client("max", n, kc, srcs, ports, 60, hold, rate, wait=0.5, dur=hold + 360)
            sampler = TreeSampler([srv.pid, cli.pid], lambda cmd: c_kind(cmd)).start()
            res["cmd"] = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(cli.args))
            est_at, est = self.b.wait(lambda: cli.tail.matching(r"^ESTABLISHED"), 3 * n / rate + 120,
                                      "ESTABLISHED", [cli])[0]
            res["established_line"] = est
            done_at, done = self.b.wait(lambda: cli.tail.matching(r"^HOLD_DONE"), hold + 60, "HOLD_DONE", [srv])[0]
            res["hold_line"] = done
            sampler.stop()
            # The hold's CPU and memory: from a second after ESTABLISHED to 3 s
            # before the hold's end (the client's processes exit at its end).
            cpu_fields(res, sampler.window(est_at + 1, min(done_at, est_at + hold) - 3, wall=False))
            first = cli.tail.matching(r"^C t=")
            if first:
                res["ramp_cpu_by_kind"] = sampler.window(first[0][0], est_at, wall=False).get("cores")
            res.update(c_figures(cli.tail.matching(r"^(C t=|ESTABLISHED|HOLD_DONE)"), n))
            e, h = kv(est), kv(done)
            failures = sum(int(h.get(k, 0)) for k in ("timeouts", "conn_err", "closed_by_peer", "io_err", "bad"))
            res["failures"] = failures
            res["held"] = int(e.get("est", 0)) if failures == 0 else 0
            m = re.search(r"=> (\d+) conn/s", est)
            res["connect_rate"] = float(m.group(1)) if m else None
            res["hold_rtt_p50_ms"] = float(h["p50_us"]) / 1000
            res["hold_rtt_p99_ms"] = float(h["p99_us"]) / 1000
            res["ramp_rate"] = res["connect_rate"]
        except GuardTripped as g:
            res["guard"] = str(g)
        finally:
            if sampler is not None:
                sampler.stop()
            c.stop_pair(srv, cli)
        return res

    def mem_cpu_phase(self, n: int, window: float) -> dict[str, Any]:
        port0 = free_ports(16, 11000, 11990)
        srcs, ports = self.ranges(n, port0)
        interval = n / CPU_PINGS
        ks, kc = (8, 6) if n >= 100_000 else (2, 2)
        res: dict[str, Any] = {"n": n, "interval": interval, "processes": {"server": ks, "client": kc}}
        srv = cli = None
        try:
            srv = self.server("mem", ports, ks, 300)
            cli = self.client("mem", n, kc, srcs, ports, interval, interval + window + 15, 20_000, wait=2, dur=300)
            self.b.wait(lambda: len(children_of(cli.pid)) >= kc, 5, "C client processes", [cli])
            time.sleep(0.5)
            spids, cpids = children_of(srv.pid), children_of(cli.pid)
            base = {"server": [c.rss_bytes(p) for p in spids], "client": [c.rss_bytes(p) for p in cpids]}
            self.b.wait(lambda: cli.tail.matching(r"^ESTABLISHED"), 120, "ESTABLISHED", [cli])
            self.b.sleep(interval + 2)  # every connection has pinged once
            loaded = {"server": [c.rss_bytes(p) for p in spids], "client": [c.rss_bytes(p) for p in cpids]}
            res["worker_baseline_rss"] = statistics.mean(base["server"] + base["client"])
            for side in ("server", "client"):
                res[f"mem_per_conn_{side}"] = (sum(loaded[side]) - sum(base[side])) / n
            cpu = measure_cpu(self.b, {"server": srv.pid, "client": cli.pid}, window,
                              lambda: c_pongs(cli))
            res.update(cpu)
        except GuardTripped as g:
            res["guard"] = str(g)
        finally:
            c.stop_pair(srv, cli)
        return res

    def rate_step(self, n: int, pings: float, window: float) -> dict[str, Any]:
        port0 = free_ports(16, 11000, 11990)
        srcs, ports = self.ranges(n, port0)
        interval = n / pings
        ks, kc = (8, 6) if n >= 100_000 else (2, 2)
        res: dict[str, Any] = {"pings_per_s": pings, "interval": interval}
        srv = cli = None
        try:
            srv = self.server("rate", ports, ks, 300)
            cli = self.client("rate", n, kc, srcs, ports, interval, window + interval + 2, 30_000, dur=300)
            self.b.wait(lambda: cli.tail.matching(r"^HOLD_DONE"), 60 + window + interval + n / 10_000, "HOLD_DONE",
                        [cli])
            h = kv(cli.tail.matching(r"^HOLD_DONE")[0][1])
            res["p99_ms"] = float(h["p99_us"]) / 1000
            res["answered_per_s"] = float(re.search(r"\(([\d.]+)/s\)", cli.tail.matching(r"^HOLD_DONE")[0][1]).group(1))
            res["failures"] = sum(int(h.get(k, 0)) for k in ("timeouts", "conn_err", "closed_by_peer", "io_err"))
        except GuardTripped as g:
            res["guard"] = str(g)
        finally:
            c.stop_pair(srv, cli)
        return res


def c_pongs(cli: c.Proc) -> int:
    lines = cli.tail.matching(r"^C t=")
    return int(kv(lines[-1][1]).get("pongs_total", 0)) if lines else 0


def measure_cpu(bench: Bench, roots: dict[str, int], window: float, pongs: Callable[[], int]) -> dict[str, Any]:
    """CPU of each process tree over `window` s and round trips from `pongs()`."""
    p0, t0 = pongs(), time.monotonic()
    win = c.CpuWindow(roots)
    bench.sleep(window)
    cpu = win.finish()
    p1, t1 = pongs(), time.monotonic()
    rts = max(1, p1 - p0)
    out = {"pongs_per_s": rts / (t1 - t0), "cpu_s": cpu["cpu_s"], "window_s": round(t1 - t0, 1),
           "machine_busy_s": round(cpu["machine_busy_s"], 1), "others_cpu_s": cpu["others_cpu_s"]}
    out["cpu_us_per_rt"] = sum(cpu["cpu_s"].values()) * 1e6 / rts
    for side, s in cpu["cpu_s"].items():
        out[f"cpu_us_per_rt_{side}"] = s * 1e6 / rts
    return out


# -- connscale ---------------------------------------------------------------------


class Connscale:
    def __init__(self, bench: Bench, fast_path: str | None = None) -> None:
        self.b = bench
        self.env = {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "CONNSCALE_SECRET": bench.secret}
        self.fast_path = fast_path
        if fast_path is not None:
            self.env["CONNSCALE_FAST_PATH"] = "1" if fast_path == "on" else "0"
        import yaml

        self.yaml = yaml
        self.million = self.million_config()

    @staticmethod
    def million_config() -> dict[str, Any]:
        import yaml

        with open(os.path.join(HERE, "million.yaml")) as f:
            return yaml.safe_load(f)  # type: ignore[no-any-return]

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "connscale", *args]

    def config(self, name: str, n: int, interval: float, final_hold: float, rate: float,
               ports: tuple[int, int] | None = None, steps: int | None = None,
               client_workers: int | None = None) -> str:
        cfg = json.loads(json.dumps(self.million))
        if client_workers is not None:
            cfg["client"]["workers"] = client_workers
        sc = cfg["scenario"]
        sc["target"], sc["final_hold"], sc["rate"] = n, final_hold, rate
        if steps is not None:
            sc["steps"] = steps
        sc["time_limit"] = int(n / rate * 3 + final_hold + 120)
        cfg["client"]["interval"] = interval
        if ports is not None:
            nsrc, nports = layout(n)
            cfg["server"]["ports"] = f"{ports[0]}-{ports[0] + nports - 1}"
            cfg["client"]["source_ips"] = f"127.0.0.2-127.0.0.{1 + nsrc}"
        cfg["control"]["listen"] = f"tcp:{free_ports(1, 13000, 13990)}:interface=127.0.0.1"
        cfg["run"]["dir"] = os.path.join(self.b.dir, "runs")
        path = os.path.join(self.b.dir, f"{name}.yaml")
        with open(path, "w") as f:
            self.yaml.safe_dump(cfg, f, sort_keys=False)
        return path

    def run(self, tag: str, config: str, extra: list[str], bound: float,
            sampler: list[TreeSampler] | None = None) -> tuple[Summary, str]:
        """`connscale run`, to its end; (summary.json, run directory). With `sampler`
        (a list), a TreeSampler over the run's processes is appended to it."""
        run_dir = os.path.join(self.b.dir, f"runs-{tag}")
        proc = c.Proc(f"connscale-{tag}", self.cmd("run", "-c", config, "--run-dir", run_dir, *extra),
                      self.b.dir, env=self.env)
        if sampler is not None:
            sampler.append(TreeSampler([proc.pid], connscale_kind).start())
        try:
            self.b.wait(lambda: not proc.alive(), bound, f"connscale run ({tag}) to end")
        finally:
            if sampler:
                sampler[-1].stop()
            proc.stop(grace=60)
        summaries = [os.path.join(run_dir, d, "summary.json") for d in sorted(os.listdir(run_dir))] \
            if os.path.isdir(run_dir) else []
        summaries = [s for s in summaries if os.path.exists(s)]
        if not summaries:
            raise RuntimeError(f"connscale run ({tag}) wrote no summary:\n{proc.last_lines(20)}")
        summary, problem = read_summary(os.path.dirname(summaries[-1]))
        if summary is None:
            raise RuntimeError(f"connscale run ({tag}): {problem}")
        return summary, os.path.dirname(summaries[-1])

    def max_phase(self, n: int, hold: float, rate: float) -> dict[str, Any]:
        res: dict[str, Any] = {"n": n, "rate_asked": rate}
        if n == self.million["scenario"]["target"] and hold == self.million["scenario"]["final_hold"] \
                and rate == self.million["scenario"]["rate"] and self.fast_path is None:
            config = os.path.join(HERE, "million.yaml")
            res["cmd"] = "connscale run -c bench/million.yaml"
        else:
            # One step below a million: at this size a step lasts about a second,
            # the run's polling granularity.
            steps = None if n >= 1_000_000 else 1
            config = self.config("max", n, 60, hold, rate, steps=steps)
            res["cmd"] = f"connscale run -c bench/million.yaml (target {n}, final_hold {hold:g}, rate {rate:g})"
        sampler: list[TreeSampler] = []
        try:
            summary, run_dir = self.run("max", config, [], n / 8000 + hold + 300, sampler)
        except GuardTripped as g:
            res["guard"] = str(g)
            return res
        res["verdict"] = summary.verdict
        res["held"] = summary.held
        res["failures"] = summary.failure_total
        res["hold_rtt_p50_ms"], res["hold_rtt_p99_ms"] = summary.rtt_final_hold_ms.p50, summary.rtt_final_hold_ms.p99
        timeline = os.path.join(run_dir, TIMELINE_FILE)
        res.update(ramp_figures(summary, timeline))
        figures = hold_figures(read_timeline(timeline))
        hold_t = figures.pop("hold_t")
        res.update(figures)
        if hold_t and sampler:
            # Ends 2 s before the hold's last line: the run then writes its report (plots), and the
            # sample nearest the end may already be past it.
            cpu_fields(res, sampler[0].window(hold_t[0], max(hold_t[0] + 1, hold_t[1] - 2)))
            ramp_t = ramp_window(read_timeline(timeline))
            if ramp_t:
                res["ramp_cpu_by_kind"] = sampler[0].window(*ramp_t).get("cores")
        res["run_dir"] = run_dir
        return res

    def mem_cpu_phase(self, n: int, window: float) -> dict[str, Any]:
        """Hub and agent as `connscale run` starts them for n; 1 connection per worker, then n."""
        interval = n / CPU_PINGS
        port0 = free_ports(16, 12000, 12990)
        from connscale.control.plan import client_workers
        from connscale.host.limits import connection_budget, raise_nofile

        # As many client workers as `connscale run` starts for n (client.workers: auto), from the
        # first order on, so that the 1-connection baseline is read on every one of them.
        workers = client_workers(n, connection_budget(raise_nofile().soft))
        config = self.config("memcpu", n, interval, 10, 20_000, ports=(port0, 0), client_workers=workers)
        with open(config) as f:
            cfg = self.yaml.safe_load(f)
        host, port = "127.0.0.1", int(cfg["control"]["listen"].split(":")[1])
        res: dict[str, Any] = {"n": n, "interval": interval}
        hub = agent = None
        try:
            hub = c.Proc("cs-hub", self.cmd("server", "--config", config, "--console", "none",
                                            "--record-dir", os.path.join(self.b.dir, "memcpu-hub")),
                         self.b.dir, env=self.env)
            self.b.wait(lambda: "server workers listening" in hub.tail.text(), 60, "server workers", [hub])
            agent = c.Proc("cs-agent", self.cmd("agent", "--config", config, "--master", f"{host}:{port}",
                                                "--name", "bench"), self.b.dir, env=self.env)
            self.b.wait(lambda: "registered with controller" in agent.tail.text(), 60, "the agent", [hub, agent])
            self.ctl(config, host, port, "start", str(workers), "--client", "bench")
            timeline = os.path.join(self.b.dir, "memcpu-hub", TIMELINE_FILE)
            self.b.wait(lambda: opened(timeline, workers), 60, f"{workers} connections", [hub, agent])
            self.b.wait(lambda: len(workers_of(agent.pid, "client")) >= workers, 30, "client workers", [agent])
            self.b.sleep(interval + 2)
            spids, cpids = workers_of(hub.pid, "server"), workers_of(agent.pid, "client")
            res["processes"] = {"server": len(spids), "client": len(cpids)}
            base = {"server": [c.rss_bytes(p) for p in spids], "client": [c.rss_bytes(p) for p in cpids]}
            self.ctl(config, host, port, "start", str(n - workers), "--client", "bench")
            self.b.wait(lambda: opened(timeline, n), 60 + n / 5000, f"{n} connections", [hub, agent])
            self.b.sleep(interval + 2)
            loaded = {"server": [c.rss_bytes(p) for p in spids], "client": [c.rss_bytes(p) for p in cpids]}
            res["worker_baseline_rss"] = statistics.mean(base["server"] + base["client"])
            res["worker_baseline_rss_max"] = max(base["server"] + base["client"])
            for side in ("server", "client"):
                res[f"mem_per_conn_{side}"] = (sum(loaded[side]) - sum(base[side])) / (n - workers)
            res.update(measure_cpu(self.b, {"server": hub.pid, "client": agent.pid}, window,
                                   lambda: pongs(last_record(timeline))))
            rec = last_record(timeline)
            res["failures"] = rec.failure_total if rec is not None else 0
        except GuardTripped as g:
            res["guard"] = str(g)
        finally:
            c.stop_pair(hub, agent, cli_grace=60, srv_grace=60)
        return res

    def ctl(self, config: str, host: str, port: int, *args: str) -> None:
        import subprocess

        out = subprocess.run(self.cmd("ctl", "--config", config, "--master", f"{host}:{port}", *args),
                             env=dict(os.environ, **self.env), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"connscale ctl {' '.join(args)}: {out.stderr.strip()}")

    def rate_step(self, n: int, pings: float, window: float) -> dict[str, Any]:
        interval = n / pings
        config = self.config(f"rate-{int(pings)}", n, interval, window, 15_000,
                             ports=(free_ports(16, 12000, 12990), 0), steps=1)
        res: dict[str, Any] = {"pings_per_s": pings, "interval": interval}
        try:
            # --force: a step that connscale's own preflight would refuse is still
            # measured (its verdict says how it went); the preflight's word is kept.
            summary, run_dir = self.run(f"rate-{int(pings)}", config, ["--force"], n / 8000 + window + 120)
        except GuardTripped as g:
            res["guard"] = str(g)
            return res
        pre = summary.preflight
        # What connscale's own preflight said of this step (refused or not, it ran: --force).
        res["preflight"] = "not asked" if pre is None else "ok" if pre.ok else "refused"
        res["p99_ms"] = summary.rtt_final_hold_ms.p99
        res["failures"] = summary.failure_total
        res["verdict"] = summary.verdict
        recs = [r for r in read_timeline(os.path.join(run_dir, TIMELINE_FILE)) if r.phase == "final_hold"]
        if len(recs) >= 2:
            res["answered_per_s"] = (recs[-1].client.pongs - recs[0].client.pongs) / (
                (recs[-1].t or 0.0) - (recs[0].t or 0.0))
        if res["verdict"] != "held":
            res["failures"] = max(1, res["failures"])
        return res


def read_timeline(path: str) -> list[Stats]:
    """The package's reader, for a timeline that may not exist yet."""
    try:
        return list(read_records(path))
    except OSError:
        return []


def last_record(path: str) -> Stats | None:
    recs = read_timeline(path)
    return recs[-1] if recs else None


def pongs(rec: Stats | None) -> int:
    return rec.client.pongs if rec is not None else 0


def opened(timeline: str, n: int) -> bool:
    rec = last_record(timeline)
    return rec is not None and rec.client.open >= n and rec.server.open >= n


def ramp_figures(summary: Summary, timeline: str) -> dict[str, Any]:
    """Average connect rate over the ramp steps, the rate around 10 % and 90 % of
    the target, and RTT p99 per second while ramping."""
    steps = summary.steps
    out: dict[str, Any] = {}
    seconds = sum(s.seconds or 0 for s in steps)
    if steps and seconds:
        # The first step opened from nothing: the steps together opened the last one's target.
        out["connect_rate"] = out["ramp_rate"] = steps[-1].target / seconds
        out["ramp_steps"] = [{"step": s.step, "target": s.target, "seconds": s.seconds, "rate_asked": s.rate_asked,
                              "rate_achieved": s.rate_achieved} for s in steps]
        out["ramp_first_step_rate"] = steps[0].rate_achieved
        out["ramp_last_step_rate"] = steps[-1].rate_achieved
    recs = read_timeline(timeline)
    target = summary.target
    rates, p99s = {"10%": [], "90%": []}, []
    for a, b in zip(recs, recs[1:]):
        if not b.phase.startswith("ramp"):
            continue
        dt = (b.t or 0.0) - (a.t or 0.0)
        rate = (b.client.opened - a.client.opened) / dt if dt > 0 else 0
        p99 = b.rtt_window_ms.p99 if b.rtt_window_ms is not None else None
        if p99 is not None and rate > 0:
            p99s.append(p99)
        opn = b.client.open
        if rate > 0:
            if 0.05 * target <= opn <= 0.15 * target:
                rates["10%"].append(rate)
            if 0.85 * target <= opn <= 0.95 * target:
                rates["90%"].append(rate)
    out["connect_rate_near_10pct"] = statistics.mean(rates["10%"]) if rates["10%"] else None
    out["connect_rate_near_90pct"] = statistics.mean(rates["90%"]) if rates["90%"] else None
    out["ramp_rtt_p99_ms_max"] = max(p99s) if p99s else None
    out["ramp_rtt_p99_ms_median"] = out["ramp_p99_ms"] = statistics.median(p99s) if p99s else None
    out["ramp_seconds_p99_over_50ms"] = sum(1 for p in p99s if p >= RTT_P99_LIMIT_MS)
    out["ramp_seconds"] = len(p99s)
    return out


def ramp_window(recs: list[Stats]) -> tuple[float, float] | None:
    """Wall times of the first and last ramp second."""
    ramp = [r.t or 0.0 for r in recs if r.phase.startswith("ramp")]
    return (ramp[0], ramp[-1]) if len(ramp) >= 2 else None


# -- the sweep ------------------------------------------------------------------------


def sweep(bench: Bench, step: Callable[[int, float, float], dict[str, Any]], n: int, rates: list[int],
          window: float, per_step: float) -> dict[str, Any]:
    """Highest rate of `rates` (ascending) held; stops at the first that fails."""
    best, tried = 0.0, []
    for pings in rates:
        if bench.left() < per_step:
            bench.notes.append(f"rate sweep stopped before {pings}/s: {bench.left():.0f} s left")
            break
        r = step(n, pings, window)
        ok = (not r.get("guard") and r.get("failures", 1) == 0 and r.get("p99_ms") is not None
              and r["p99_ms"] < RTT_P99_LIMIT_MS and (r.get("answered_per_s") or 0) >= 0.95 * pings)
        r["ok"] = ok
        tried.append(r)
        c.log(f"  {pings}/s: {'held' if ok else 'not held'} {r}")
        if not ok:
            break
        best = r.get("answered_per_s") or float(pings)
    return {"max_pings_per_s": best, "steps": tried}


# -- report ------------------------------------------------------------------------------


def _ratio(a: Any, b: Any) -> float | None:
    ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
    return round(a / b, 3) if ok else None


def fnum(x: Any, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def report(results: dict[str, dict[str, Any]], mode: str, bench: Bench) -> dict[str, Any]:
    flat: dict[str, dict[str, Any]] = {}
    for impl, r in results.items():
        m, mc, rt = r.get("max", {}), r.get("memcpu", {}), r.get("rate", {})
        flat[impl] = {
            "held": m.get("held"),
            "mem_per_conn_server": mc.get("mem_per_conn_server"),
            "mem_per_conn_client": mc.get("mem_per_conn_client"),
            "worker_baseline_rss": mc.get("worker_baseline_rss"),
            "cpu_us_per_rt": mc.get("cpu_us_per_rt"),
            "max_pings_per_s": rt.get("max_pings_per_s"),
            "connect_rate": m.get("connect_rate"),
            "hold_rtt_p99_ms": m.get("hold_rtt_p99_ms"),
            **{k: m.get(k) for k in MILLION_KEYS},
            "hold_cpu_by_kind": m.get("hold_cpu_by_kind"),
        }
        if rt.get("steps"):
            flat[impl]["rate_steps"] = [{k: s.get(k) for k in ("pings_per_s", "ok", "answered_per_s", "p99_ms",
                                                               "verdict", "preflight")} for s in rt["steps"]]
    ratio: dict[str, Any] = {}
    if "connscale" in flat and "c" in flat:
        for k in KEYS + MILLION_KEYS:
            a, b = flat["connscale"].get(k), flat["c"].get(k)
            if isinstance(a, dict) and isinstance(b, dict):
                ratio[k] = {sub: _ratio(a.get(sub), b.get(sub)) for sub in a}
            else:
                ratio[k] = _ratio(a, b)
    rows = [
        ("(a) held, final hold at interval 60 s", "held", ",.0f"),
        ("(b) user B/conn, server", "mem_per_conn_server", ",.0f"),
        ("(b) user B/conn, client", "mem_per_conn_client", ",.0f"),
        ("(c) worker baseline RSS, MB", "worker_baseline_rss", ".1f"),
        ("(d) CPU µs per round trip, both sides", "cpu_us_per_rt", ".1f"),
        ("(e) max pings/s, p99 < 50 ms", "max_pings_per_s", ",.0f"),
        ("(f) ramp connect rate, /s", "connect_rate", ",.0f"),
        ("(g) hold RTT p99, ms", "hold_rtt_p99_ms", ".2f"),
    ]
    rows += [
        ("(h) ramp rate (a), /s", "ramp_rate", ",.0f"),
        ("(h) ramp first step, /s", "ramp_first_step_rate", ",.0f"),
        ("(h) ramp last step, /s", "ramp_last_step_rate", ",.0f"),
        ("(h) ramp RTT p99 per s, median, ms", "ramp_p99_ms", ".2f"),
        ("(i) hold RTT p50 per s, median, ms", "hold_p50_ms.median", ".3f"),
        ("(i) hold RTT p50 per s, worst, ms", "hold_p50_ms.worst", ".3f"),
        ("(i) hold RTT p99 per s, median, ms", "hold_p99_ms.median", ".2f"),
        ("(i) hold RTT p99 per s, worst, ms", "hold_p99_ms.worst", ".2f"),
        ("(j) hold CPU, all processes, cores", "hold_cpu_cores", ".3f"),
        ("(j) user memory, all processes, MB", "user_mem_bytes", ",.0f"),
    ]
    print()
    print(f"== bench/run --{mode} on {socket.gethostname()} ({os.cpu_count()} cores, "
          f"{read_meminfo().get('MemTotal', 0) / 2**30:.1f} GiB), {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"   {'':42s} {'connscale':>12s} {'C':>12s} {'ratio':>7s}")
    for label, key, spec in rows:
        name, _, sub = key.partition(".")
        a, b, r = flat.get("connscale", {}).get(name), flat.get("c", {}).get(name), ratio.get(name)
        if sub:
            a, b, r = ((x or {}).get(sub) if isinstance(x, dict) or x is None else None for x in (a, b, r))
        if key in ("worker_baseline_rss", "user_mem_bytes"):
            a, b = (None if a is None else a / 2**20), (None if b is None else b / 2**20)
        print(f"   {label:42s} {fnum(a, spec):>12s} {fnum(b, spec):>12s} {fnum(r, '.2f'):>7s}")
    details(results)
    for note in bench.notes:
        print(f"   note: {note}")
    return {"connscale": flat.get("connscale", {}), "c": flat.get("c", {}), "ratio": ratio}


def details(results: dict[str, dict[str, Any]]) -> None:
    for impl, r in results.items():
        m, mc = r.get("max", {}), r.get("memcpu", {})
        print(f"   -- {impl}")
        if m:
            print(f"      max: {m.get('cmd', '')}: verdict {m.get('verdict', '-')}, failures {m.get('failures')}, "
                  f"hold RTT p50 {fnum(m.get('hold_rtt_p50_ms'), '.2f')} ms"
                  + (f"; ramp {fnum(m.get('connect_rate_near_10pct'))}/s near 10 %, "
                     f"{fnum(m.get('connect_rate_near_90pct'))}/s near 90 % of the target; ramp RTT p99 per second "
                     f"median {fnum(m.get('ramp_rtt_p99_ms_median'), '.1f')} ms, max "
                     f"{fnum(m.get('ramp_rtt_p99_ms_max'), '.1f')} ms, {m.get('ramp_seconds_p99_over_50ms')} of "
                     f"{m.get('ramp_seconds')} s >= 50 ms" if 'ramp_seconds' in m else "")
                  + (f" GUARD: {m['guard']}" if m.get("guard") else ""))
        if m.get("hold_cpu_by_kind"):
            print(f"      hold CPU by kind (cores): {m['hold_cpu_by_kind']}; processes {m.get('processes')}; "
                  f"machine busy {m.get('hold_machine_busy_cores')} cores, not ours {m.get('hold_others_cores')} "
                  f"(softirq {m.get('hold_softirq_cores')})")
        if m.get("ramp_cpu_by_kind"):
            print(f"      ramp CPU by kind (cores): {m['ramp_cpu_by_kind']}")
        if mc:
            cpu = mc.get("cpu_s", {})
            print(f"      mem/cpu at {mc.get('n')} connections, interval {fnum(mc.get('interval'), '.2f')} s, "
                  f"processes {mc.get('processes')}: {fnum(mc.get('pongs_per_s'))} round trips/s; CPU s "
                  f"{ {k: round(v, 2) for k, v in cpu.items()} } over {mc.get('window_s')} s "
                  f"(server {fnum(mc.get('cpu_us_per_rt_server'), '.1f')}, client "
                  f"{fnum(mc.get('cpu_us_per_rt_client'), '.1f')} µs/RT); machine busy "
                  f"{mc.get('machine_busy_s')} CPU-s, not ours {mc.get('others_cpu_s')}"
                  + (f" GUARD: {mc['guard']}" if mc.get("guard") else ""))
        for s in r.get("rate", {}).get("steps", []):
            print(f"      rate {s['pings_per_s']:,}/s (interval {s['interval']:.2f} s): "
                  f"{'held' if s.get('ok') else 'not held'}, answered {fnum(s.get('answered_per_s'))}/s, "
                  f"p99 {fnum(s.get('p99_ms'), '.1f')} ms, failures {s.get('failures')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="<= 20,000 connections, < 3 minutes (the default)")
    g.add_argument("--full", action="store_true", help="1,000,000 connections, < 15 minutes")
    ap.add_argument("--only", choices=("connscale", "c"), help="measure one implementation only")
    ap.add_argument("--phases", default="max,memcpu,rate", help="comma list of max, memcpu, rate")
    ap.add_argument("--min-available", type=float, default=1.5, help="memory guard: GiB of MemAvailable (1.5)")
    ap.add_argument("--c-memguard", type=float, default=14, help="the C client's own -m guard, GiB (14)")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--rate", type=float, help="connects/s asked of both sides in (a) (default: bench/million.yaml's)")
    ap.add_argument("--fast-path", choices=("on", "off"),
                    help="connscale's net.fast_path (default: the config's, on); off = Twisted's own transports")
    args = ap.parse_args()
    c.stop_on_signals()
    bench = Bench(args)
    mode = "full" if args.full else "quick"
    M = bench.mode
    phases = args.phases.split(",")
    impls = [i for i in ("c", "connscale") if args.only in (None, i)]
    c.log(f"bench/run --{mode}: logs in {bench.dir}; budget {M['budget']} s")
    runners: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {i: {} for i in impls}
    try:
        if "c" in impls:
            runners["c"] = CRef(bench)
        if "connscale" in impls:
            runners["connscale"] = Connscale(bench, args.fast_path)
        # Both sides are asked the same connect rate: the million's.
        rate = args.rate or Connscale.million_config()["scenario"]["rate"]
        # Phase by phase, C then connscale: back to back, so both see the same machine.
        if "max" in phases:
            for impl in impls:
                c.log(f"{impl}: {M['max_n']:,} connections, hold {M['hold']} s at interval 60 s")
                results[impl]["max"] = runners[impl].max_phase(M["max_n"], M["hold"], rate)
                c.log(f"{impl}: max -> {results[impl]['max']}")
        if "memcpu" in phases:
            for impl in impls:
                c.log(f"{impl}: memory and CPU at {M['mem_n']:,} connections, {CPU_PINGS:,} pings/s")
                results[impl]["memcpu"] = runners[impl].mem_cpu_phase(M["mem_n"], M["cpu_window"])
                c.log(f"{impl}: memcpu -> {results[impl]['memcpu']}")
        if "rate" in phases:
            share = 1.0 / len(impls)
            for impl in impls:
                per_step = M["rate_n"] / 10_000 + M["rate_window"] + 15
                budget_end = bench.left() * share
                c.log(f"{impl}: highest ping rate held {M['rate_window']} s with p99 < 50 ms "
                      f"({M['rate_n']:,} connections)")
                results[impl]["rate"] = sweep(bench, runners[impl].rate_step, M["rate_n"], M["rates"],
                                              M["rate_window"], min(per_step, budget_end))
    except c.Terminated as e:
        bench.notes.append(f"interrupted: {e}")
    except RuntimeError as e:
        bench.notes.append(f"stopped: {e}")
        c.log(f"stopped: {e}")
    out = report(results, mode, bench)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"result": out, "details": results}, f, indent=1, default=str)
    print(json.dumps(out, separators=(",", ":"), default=str))


if __name__ == "__main__":
    main()
