"""bench/_common: the one process-stop helper every bench script uses (stop_process)."""

from __future__ import annotations


import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import _common as c  # noqa: E402

#: A parent that ignores SIGTERM and has a child of its own (which ignores it too).
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_child_that_exits_on_the_first_signal_is_left_to_exit() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    c.stop_process(proc, "sleeper", ((signal.SIGINT, 10),))
    assert proc.returncode is not None and proc.returncode != -signal.SIGKILL


def test_a_stubborn_tree_gets_each_signal_then_sigkill_to_every_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    started = time.monotonic()
    c.stop_process(proc, "stubborn", ((signal.SIGTERM, 0.3), (signal.SIGTERM, 0.3)))
    assert proc.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(grandchild), "the child's own child outlived the stop"
