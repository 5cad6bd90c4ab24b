"""Driving a `connscale run` whose observer watches a server, and the test's own reading of /proc
beside it: the run in the background with its timeline read as it is written, each process's RSS
from /proc/PID/statm, the kernel's socket memory from slabinfo and sockstat, each worker's RSS
before its first connection. Shared by tests/test_observe_e2e.py and tests/test_observe_redis_e2e.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

from connscale.host.slab import read_slabinfo, socket_caches
from tests.support.procs import connscale

PAGE = os.sysconf("SC_PAGE_SIZE")


class Run:
    """`connscale run` in the background, its timeline read as it is written."""

    def __init__(self, tmp: Path, config: Path, *extra: str) -> None:
        self.tmp = tmp
        env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"), PYTHONUNBUFFERED="1")
        self.out = open(tmp / "run.out", "w")
        self.popen = subprocess.Popen(connscale("run", "-c", str(config), *extra), stdout=self.out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=tmp,
                                      start_new_session=True)

    def lines(self) -> list[dict[str, Any]]:
        found = list((self.tmp / "runs").glob("*/timeline.jsonl"))
        if not found:
            return []
        out = []
        for text in found[0].read_text().splitlines():
            try:
                out.append(json.loads(text))
            except ValueError:
                pass  # the line being written
        return out

    def wait_line(self, what: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in reversed(self.lines()):
                if pred(line):
                    return line
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no timeline line with {what}\n{self.text()[-3000:]}")

    def text(self) -> str:
        return (self.tmp / "run.out").read_text(errors="replace")

    def finish(self, timeout: float = 150.0) -> tuple[int, dict[str, Any]]:
        try:
            code = self.popen.wait(timeout)
        finally:
            self.stop()
        summaries = list((self.tmp / "runs").glob("*/summary.json"))
        assert len(summaries) == 1, self.text()[-3000:]
        return code, json.loads(summaries[0].read_text())

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.out.close()


def rss(pids: list[int]) -> int:
    """The test's own reading: resident pages of each process from /proc/PID/statm."""
    return sum(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE for pid in pids)


def kernel_bytes() -> int | None:
    slab = read_slabinfo()
    if slab is None:
        return None
    text = Path("/proc/net/sockstat").read_text()
    pages = int(text.split("TCP:")[1].split("mem")[1].split()[0])
    return sum(socket_caches(slab).values()) + pages * PAGE


def observed(line: dict[str, Any]) -> dict[str, Any] | None:
    row = (line.get("observers") or {}).get("server") or {}
    targets = row.get("targets") or []
    return targets[0] if targets else None


def close(mine: float, theirs: float, rel: float = 0.10, slack: float = 0.0, noise: float = 0.0) -> bool:
    """Within `rel` of theirs (or `slack`, whichever is larger), plus the measured `noise`."""
    return abs(mine - theirs) <= max(rel * abs(theirs), slack) + noise


def sockets_of(pid: int) -> int:
    """The test's own count of a process's socket fds."""
    base = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in base.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def started_pids(log: Path, prefix: str) -> list[int]:
    """pids of the workers a supervisor log says it started ("<prefix>-N started (pid P, ...")."""
    if not log.exists():
        return []
    return [int(line.split("(pid ")[1].split(",")[0]) for line in log.read_text(errors="replace").splitlines()
            if f"{prefix}-" in line and " started (pid " in line]


#: Seconds before a worker's first connection whose RSS readings bound when the observer's
#: baseline was read (its last line before the first connection: up to a second earlier, and
#: the line's second again).
BASELINE_WINDOW = 2.0


def idle_readings(run: "Run", servers: int, clients: int, ports: int = 2, timeout: float = 60.0,
                  targets: Mapping[int, int] | None = None
                  ) -> tuple[dict[int, int], dict[int, int], list[int], list[int]]:
    """RSS of every worker before its first connection, read by the test from /proc/PID/statm
    every 20 ms from the moment its supervisor logs its pid; a worker's last reading counts while
    it holds no socket but its listeners (`ports` of them for a server worker, none for a client).
    `targets`: servers not connscale's (pid -> the sockets it holds idle, its listeners), read
    the same way from the first moment. Also each one's spread (max - min) of those readings over
    its last BASELINE_WINDOW seconds: how much its idle RSS moved while the observer may have read it."""
    targets = dict(targets or {})
    run_dir = lambda: next(iter((run.tmp / "runs").glob("*/")), None)  # noqa: E731
    idle: dict[int, int] = {}
    samples: dict[int, list[tuple[float, int]]] = {}
    done: set[int] = set()
    deadline = time.monotonic() + timeout
    server_pids: list[int] = []
    client_pids: list[int] = []
    while time.monotonic() < deadline and run.popen.poll() is None:
        where = run_dir()
        if where is not None:
            server_pids = started_pids(where / "hub.log", "hub-server-worker")[:servers]
            client_pids = started_pids(where / "agent.log", "local-client-worker")[:clients]
        for pid in server_pids + client_pids + list(targets):
            if pid in done:
                continue
            try:
                reading, held = rss([pid]), sockets_of(pid)
            except OSError:
                continue
            if held > targets.get(pid, ports if pid in server_pids else 0):
                done.add(pid)
            else:
                idle[pid] = reading
                samples.setdefault(pid, []).append((time.monotonic(), reading))
        if len(server_pids) == servers and len(client_pids) == clients and \
                done >= set(server_pids + client_pids + list(targets)):
            spread = {}
            for pid, seen in samples.items():
                recent = [r for t, r in seen if t >= seen[-1][0] - BASELINE_WINDOW]
                spread[pid] = max(recent) - min(recent)
            return idle, spread, server_pids, client_pids
        time.sleep(0.02)
    raise AssertionError(f"workers did not start and connect: {server_pids} {client_pids}\n{run.text()[-3000:]}")


class KernelSamples:
    """The kernel's socket memory (`kernel_bytes`) every 100 ms in a thread, from start to stop:
    how much these whole-host counters moved by themselves (other programs on a shared box open
    and close sockets too) around the instants the observer and the test read them."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "KernelSamples":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _sample(self) -> None:
        while not self._stop.is_set():
            value = kernel_bytes()
            if value is not None:
                self.seen.append((time.monotonic(), value))
            self._stop.wait(0.1)

    def spread(self, since: float, until: float) -> int:
        """max - min of the samples taken between two monotonic instants (0 with fewer than two)."""
        values = [v for t, v in self.seen if since <= t <= until]
        return max(values) - min(values) if len(values) >= 2 else 0


def hold_readings(run: "Run", server_pids: list[int], client_pids: list[int],
                  timeout: float = 90.0) -> dict[float, dict[str, Any]]:
    """The test's own reading of /proc once for each final-hold second as its timeline line
    appears, until the run leaves the hold: the servers' and the clients' RSS, the kernel's
    socket memory and the open count, by the second's elapsed_s. The last such reading may
    overlap the stop (connections closing): a test stands the one before it beside the table's."""
    readings: dict[float, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and run.popen.poll() is None:
        lines = run.lines()
        if lines and lines[-1].get("phase") == "final_hold":
            readings.setdefault(lines[-1]["elapsed_s"], {
                "server": rss(server_pids), "client": rss(client_pids), "kernel": kernel_bytes(),
                "open": lines[-1]["client"]["open"]})
        elif readings:
            break
        time.sleep(0.1)
    return readings


def unique_server(tmp: Path) -> tuple[str, Path]:
    """redis-server under a name no other process on this box has (a symlink: the kernel
    names the process after it), so `--observe NAME` cannot find someone else's."""
    name = "rds-" + secrets.token_hex(3)
    link = tmp / name
    link.symlink_to(shutil.which("redis-server") or "/usr/bin/redis-server")
    return name, link
