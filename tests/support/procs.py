"""Real connscale processes for end-to-end tests: start, watch logs, stop by pid."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from connscale.metrics.status import parse_status

#: Ports for servers under test come from below Linux's ephemeral range
#: (32768-60999): a port the kernel handed out with bind(0) is also what the
#: next outgoing connect may take, and our tests open thousands of those.
PORT_POOL = range(20000, 32000)


def _worker_pool(pool: range) -> range:
    """This test process's share of `pool`. Under pytest-xdist several test processes
    probe at once, and a port one of them found free is free for the other too until
    its server binds it: each worker (gw0, gw1, ...) takes its own slice."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count <= 1:
        return pool
    index = int(worker[2:]) % count
    size = len(pool) // count
    return range(pool.start + index * size, pool.start + (index + 1) * size)


PORT_POOL = _worker_pool(PORT_POOL)
_rng = random.Random()
#: Ports already handed out in this test process. A port is free when we probe
#: it and stays free until its process binds it, so two calls in a row (a
#: server's ports, then the hub's control port) could return the same port and
#: the hub would refuse its own configuration. Never hand one out twice.
_given: set[int] = set()

T = TypeVar("T")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n consecutive free ports (for port ranges), outside the ephemeral range,
    none of them handed out before by this process."""
    for _ in range(500):
        base = _rng.randrange(PORT_POOL.start, PORT_POOL.stop - n + 1)
        wanted = range(base, base + n)
        if _given.intersection(wanted):
            continue
        socks = []
        try:
            for p in wanted:
                s = socket.socket()
                s.bind((host, p))
                socks.append(s)
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        _given.update(wanted)
        return list(wanted)
    raise RuntimeError("no consecutive free ports")


class Proc:
    """A child process with its combined output in a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = (), cwd: str | Path | None = None) -> None:
        self.argv = [*prefix, *argv]
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.popen = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=full_env, cwd=str(cwd) if cwd else None, start_new_session=True)
        self.pid = self.popen.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def status_lines(self) -> list[dict[str, str]]:
        return [parse_status(line.split("] ", 1)[-1]) for line in self.lines() if "[connscale.status#info]" in line]

    def last_status(self) -> dict[str, str]:
        lines = self.status_lines()
        return lines[-1] if lines else {}

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.popen.poll() is not None and not predicate():
                raise AssertionError(f"{what}: process exited with {self.popen.returncode}\n{self.text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.text()[-3000:]}")

    def wait_line(self, needle: str, timeout: float = 20.0) -> None:
        self.wait_for(lambda: needle in self.text(), timeout, repr(needle))

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM our pid (its process group: twistd children are ours too), then SIGKILL."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def __enter__(self) -> "Proc":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connscale(verb: str, *args: str) -> list[str]:
    """argv for `python -m connscale VERB ...` with this interpreter."""
    return [sys.executable, "-m", "connscale", verb, *args]


def twistd(command: str, *args: str) -> list[str]:
    """argv for `twistd -n --pidfile= COMMAND ...` with this interpreter."""
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", command, *args]


def wait(what: str, probe: Callable[[], T], timeout: float = 30.0, every: float = 0.2) -> T:
    """`probe()`'s first truthy answer, polled every `every` s; fails naming `what` (and the last answer)
    after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
