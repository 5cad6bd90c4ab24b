"""Helpers shared by the bench scripts: processes, /proc readers, log tails.

Every wait here has a deadline and every signal goes to a pid this harness
started (or a descendant of one, found through /proc). Nothing is looked up
by process name.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
C_REF_REL = os.path.join("shared", "reference", "c-pingpong")


def find_c_ref() -> str:
    """The C reference: `../shared/reference/c-pingpong` beside the repository
    (or beside a parent of it, for a git worktree), or $CONNSCALE_C_REF."""
    if os.environ.get("CONNSCALE_C_REF"):
        return os.environ["CONNSCALE_C_REF"]
    here = REPO
    for _ in range(4):
        here = os.path.dirname(here)
        candidate = os.path.join(here, C_REF_REL)
        if os.path.isfile(os.path.join(candidate, "pingpong_client.c")):
            return candidate
    raise SystemExit(f"the C reference is not at ../{C_REF_REL} beside the repository; set CONNSCALE_C_REF")


#: The C reference's own figures (its README, measured on the reference box).
C_README = {
    "server_user_bytes_per_conn": 12.0,
    "client_user_bytes_per_conn": 38.0,
    "both_us_per_rt": 26.0,
    "both_us_per_rt_at_pings_per_s": 20_000,
}
#: The brief's memory budget: user memory per connection, per side.
BUDGET_BYTES_PER_CONN = 1.5 * 1024
#: Target for CPU: within this factor of the C reference.
CPU_TARGET_FACTOR = 2.0

MAX_CONNS = 19_000  # one process per side; RLIMIT_NOFILE is 20,000 here
HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Terminated(Exception):
    """SIGTERM/SIGHUP arrived: unwind so every `finally` stops its processes."""


def stop_on_signals() -> None:
    """Turn SIGTERM/SIGHUP into an exception (Python's default is to die on
    the spot, which would orphan the twistd/C processes a bench started)."""

    def handler(signum, frame):  # type: ignore[no-untyped-def]
        raise Terminated(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- /proc ------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (field 3 is index 0)."""
    try:
        s = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return s[s.rindex(")") + 2 :].split()


def rss_bytes(pid: int) -> int:
    """Resident set of one process (VmRSS), 0 if it is gone."""
    try:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_detail(pid: int) -> dict[str, int]:
    """RssAnon / RssFile / RssShmem in bytes: anon is what connections grow."""
    out: dict[str, int] = {}
    try:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:", "RssShmem:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def descendants(root: int) -> list[int]:
    """`root` and every live process below it (walks /proc ppid links)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        f = stat_fields(int(d))
        if f:
            children.setdefault(int(f[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
            todo.extend(children.get(p, []))
    return out


def tree_rss(root: int) -> int:
    return sum(rss_bytes(p) for p in descendants(root))


def tree_cpu_ticks(root: int) -> int:
    """utime+stime of `root` and its live descendants, plus cutime+cstime:
    children that exited and were reaped since a previous reading are counted
    there, so the difference of two readings covers the whole tree."""
    tot = 0
    for p in descendants(root):
        f = stat_fields(p)
        if f:
            # fields 14..17 of stat: utime stime cutime cstime
            tot += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return tot


def machine_cpu() -> dict[str, int]:
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    vals = list(map(int, _read("/proc/stat").splitlines()[0].split()[1:9]))
    return dict(zip(names, vals))


def all_proc_ticks() -> dict[int, tuple[str, int]]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = _read(f"/proc/{d}/stat")
            except OSError:
                continue
            comm = s[s.index("(") + 1 : s.rindex(")")]
            f = s[s.rindex(")") + 2 :].split()
            out[int(d)] = (comm, int(f[11]) + int(f[12]))
    return out


class CpuWindow:
    """CPU of a set of process trees, of the machine and of everyone else."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.t0 = time.monotonic()
        self.ticks0 = {k: tree_cpu_ticks(p) for k, p in roots.items()}
        self.machine0 = machine_cpu()
        self.all0 = all_proc_ticks()

    def finish(self) -> dict[str, object]:
        wall = time.monotonic() - self.t0
        sides = {k: (tree_cpu_ticks(p) - self.ticks0[k]) / HZ for k, p in self.roots.items()}
        m1 = machine_cpu()
        d = {k: (m1[k] - self.machine0[k]) / HZ for k in m1}
        busy = sum(v for k, v in d.items() if k not in ("idle", "iowait"))
        ours: set[int] = set()
        for p in self.roots.values():
            ours.update(descendants(p))
        ours.add(os.getpid())
        others = []
        for pid, (comm, t1) in all_proc_ticks().items():
            if pid in ours:
                continue
            # A process born inside the window counts from zero; one that was
            # born and died inside it is only in the machine-wide figure.
            dt = (t1 - self.all0.get(pid, (comm, 0))[1]) / HZ
            if dt > 0.05:
                others.append((round(dt, 2), pid, comm))
        others.sort(reverse=True)
        ours_s = sum(sides.values())
        return {
            "wall_s": wall,
            "cpu_s": sides,
            "machine_busy_s": busy,
            "machine_cores": os.cpu_count(),
            "machine_detail_s": {k: round(v, 2) for k, v in d.items()},
            "others_top": others[:5],
            # everything that is not ours: other processes, kernel threads, softirq elsewhere
            "others_cpu_s": round(max(0.0, busy - ours_s), 2),
        }


def cpu_figures(cpu: dict, pong_rate: float, ping_rate: float, srv_rate: float, p50: list[float],
                p99: list[float], extra: dict | None = None) -> dict[str, object]:
    """The result fields of a CPU-per-round-trip run, from a finished
    CpuWindow, the pong/ping/server-pong rates over it and the per-second RTT
    p50/p99 figures (ms). Round trips = pongs/s times the window length.
    `extra` fields go between the RTT and the machine fields."""
    wall = cpu["wall_s"]
    rts = pong_rate * wall
    s_cpu, k_cpu = cpu["cpu_s"]["server"], cpu["cpu_s"]["client"]
    return {
        "window_s": round(wall, 2),
        "pongs_per_s": round(pong_rate, 1), "pings_per_s": round(ping_rate, 1),
        "server_pongs_per_s": round(srv_rate, 1),
        "round_trips": round(rts),
        "server_cpu_s": round(s_cpu, 2), "client_cpu_s": round(k_cpu, 2),
        "server_core_pct": round(100 * s_cpu / wall, 1),
        "client_core_pct": round(100 * k_cpu / wall, 1),
        "server_us_per_rt": s_cpu * 1e6 / rts if rts else None,
        "client_us_per_rt": k_cpu * 1e6 / rts if rts else None,
        "both_us_per_rt": (s_cpu + k_cpu) * 1e6 / rts if rts else None,
        "rtt_p50_ms_median": statistics.median(p50) if p50 else None,
        "rtt_p99_ms_max": max(p99) if p99 else None,
        **(extra or {}),
        "machine_busy_s": round(cpu["machine_busy_s"], 2), "machine_cores": cpu["machine_cores"],
        "others_cpu_s": cpu["others_cpu_s"], "others_top": cpu["others_top"],
    }


# -- ports and processes ------------------------------------------------------


def free_port(host: str = "127.0.0.1", lo: int = 24000, hi: int = 32000) -> int:
    """A port nobody listens on, below the ephemeral range so no client takes it."""
    for _ in range(200):
        port = random.randint(lo, hi)
        s = socket.socket()
        try:
            s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise SystemExit("no free port found")


class LogTail:
    """Lines of a growing log file, each stamped with the time we first saw it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[tuple[float, str]] = []
        self._pos = 0
        self._partial = ""

    def poll(self) -> None:
        try:
            with open(self.path, errors="replace") as f:
                f.seek(self._pos)
                data = f.read()
                self._pos = f.tell()
        except OSError:
            return
        if not data:
            return
        now = time.monotonic()
        data = self._partial + data
        parts = data.split("\n")
        self._partial = parts.pop()
        self.lines.extend((now, line) for line in parts)

    def text(self) -> str:
        self.poll()
        return "\n".join(line for _, line in self.lines)

    def matching(self, rx: str) -> list[tuple[float, str]]:
        self.poll()
        r = re.compile(rx)
        return [(t, line) for t, line in self.lines if r.search(line)]


class Proc:
    """A child process with its output in a file; stopped only by its own pid."""

    def __init__(self, name: str, args: list[str], logdir: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._f = open(self.log_path, "w")
        e = dict(os.environ)
        e["PYTHONUNBUFFERED"] = "1"
        if env:
            e.update(env)
        self.p = subprocess.Popen(
            args, stdout=self._f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e, cwd=logdir
        )
        self.pid = self.p.pid
        self.tail = LogTail(self.log_path)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL to the pid and any descendants still around."""
        stop_process(self.p, self.name, ((signal.SIGTERM, grace),))
        self._f.close()

    def last_lines(self, n: int = 15) -> str:
        return "\n".join(self.tail.text().splitlines()[-n:])


def stop_process(proc: subprocess.Popen, name: str,
                 steps: Iterable[tuple[int, float]] = ((signal.SIGTERM, 20.0),)) -> None:
    """Stop a child we started, by its pid: each (signal, seconds to wait) of `steps` in turn
    until it exits, then SIGKILL to it and to whatever of its process tree is still around
    (as found before the first signal, and now)."""
    if proc.poll() is not None:
        return
    kids = descendants(proc.pid)
    for sig, wait in steps:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            log(f"{name} (pid {proc.pid}) did not stop {wait:g}s after {signal.Signals(sig).name}")
    for pid in dict.fromkeys([proc.pid, *kids, *descendants(proc.pid)]):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def stop_pair(srv: Proc | None, cli: Proc | None, cli_grace: float = 20.0, srv_grace: float = 20.0) -> None:
    """Stop a bench's client, then its server (either may not have started)."""
    if cli:
        cli.stop(cli_grace)
    if srv:
        srv.stop(srv_grace)


def wait_until(pred: Callable[[], object], timeout: float, what: str, procs: Iterable[Proc] = (), tick: float = 0.05):
    """Poll `pred` until it returns something truthy; fail after `timeout`
    or as soon as one of `procs` has exited."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{p.name} exited (rc {p.p.returncode}) while waiting for {what}:\n{p.last_lines()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(tick)


def sleep_polling(secs: float, tails: Iterable[LogTail], tick: float = 0.05) -> None:
    """Sleep while keeping log tails current, so line timestamps stay tight."""
    end = time.monotonic() + secs
    tails = list(tails)
    while True:
        for t in tails:
            t.poll()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(tick, left))


# -- connscale status lines ------------------------------------------------------

STATUS_RX = r"\[connscale\.status#info\] open="


def status_lines(tail: LogTail) -> list[tuple[float, dict[str, str]]]:
    """(time seen, fields) of every status line in a log, read by the package's own parser."""
    from connscale.metrics.status import parse_status

    return [(t, parse_status(line.split("] ", 1)[1])) for t, line in tail.matching(STATUS_RX)]


def last_status(tail: LogTail) -> dict[str, str] | None:
    lines = status_lines(tail)
    return lines[-1][1] if lines else None


TWISTD_MAIN = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"


def twistd_cmd(*args: str) -> list[str]:
    """`twistd -n --pidfile= ARGS`."""
    return [sys.executable, "-c", TWISTD_MAIN, "-n", "--pidfile=", *args]


def server_args(port: int, workers: int = 0) -> list[str]:
    """connscale-server on 127.0.0.1:PORT (the default interface), a status line a second."""
    return ["connscale-server", "--workers", str(workers), "--port", str(port), "--status-interval", "1"]


def client_args(port: int, n: int, interval: float, rate: float, timeout: float = 10, workers: int = 0) -> list[str]:
    """connscale-client: N connections to 127.0.0.1:PORT, spread over source_ips(N)."""
    args = ["connscale-client", "--server", f"127.0.0.1:{port}", "--workers", str(workers),
            "--connections", str(n), "--interval", str(interval), "--timeout", str(timeout),
            "--rate", str(rate), "--status-interval", "1"]
    for ip in source_ips(n):
        args += ["--source-ip", ip]
    return args


def start_client(srv: Proc, cargs: list[str], logdir: str, n: int, timeout: float) -> tuple[Proc, float]:
    """Start the client (`cargs`) against `srv`, wait until both hold `n`: the client, and
    the seconds that took. A client that does not get there is stopped here (the caller
    never holds it)."""
    cli = Proc("client", twistd_cmd(*cargs), logdir)
    started = time.monotonic()
    try:
        wait_all_open(srv, cli, n, timeout)
    except BaseException:
        cli.stop()
        raise
    open_s = round(time.monotonic() - started, 2)
    log(f"all {n} open after {open_s} s")
    return cli, open_s


def wait_all_open(srv: Proc, cli: Proc, n: int, timeout: float) -> None:
    """Wait until both sides' status lines say open >= n; the error names the last ones."""

    def all_open():  # type: ignore[no-untyped-def]
        s, k = last_status(srv.tail), last_status(cli.tail)
        return s and k and int(s["open"]) >= n and int(k["open"]) >= n

    try:
        wait_until(all_open, timeout, f"{n} open connections", [srv, cli])
    except RuntimeError as e:
        raise RuntimeError(f"{e}\nlast server status: {last_status(srv.tail)}\n"
                           f"last client status: {last_status(cli.tail)}") from None


def source_ips(n_conns: int, per_route: int = 14_000, first: int = 2) -> list[str]:
    """Enough 127.0.0.x source addresses for one server port (14k per route)."""
    count = max(2, -(-n_conns // per_route))
    return [f"127.0.0.{first + i}" for i in range(count)]


# -- command line and output -------------------------------------------------------


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The parser every bench starts from: its docstring as help, and -n."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--connections", type=int, default=10_000, help="connections (default 10000, max 19000)")
    return ap


def add_port_json(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--port", type=int, default=0, help="server port (default: a free one in 24000-32000)")
    ap.add_argument("--json", help="write the result here as JSON")


def parse_bench_args(ap: argparse.ArgumentParser, limit: Callable[[argparse.Namespace], int] = lambda a: MAX_CONNS,
                     why: str = "per process") -> argparse.Namespace:
    """Parse, turn SIGTERM/SIGHUP into Terminated, and check -n against `limit(args)`."""
    args = ap.parse_args()
    stop_on_signals()
    if not 1 <= args.connections <= limit(args):
        ap.error(f"--connections must be 1..{MAX_CONNS} {why}")
    return args


def run_bench(args: argparse.Namespace, run: Callable[[argparse.Namespace], dict],
              report: Callable[[dict], None]) -> None:
    res = run(args)
    report(res)
    dump_json(args.json, res)


def dump_json(path: str | None, data: dict) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(data, f, indent=1, default=str)
        log(f"wrote {path}")


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}x"
