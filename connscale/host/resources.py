"""Resources of a process (memory, CPU time) and of this host (cores)."""

from __future__ import annotations

import os

import psutil


def process_resources(pid: int | None = None, count_fds: bool = False) -> dict[str, float]:
    """Memory, CPU time, threads (and on request fds) of a process (default: this one).

    Counting fds lists /proc/PID/fd: at 15,000 sockets that blocks for ~15 ms
    and makes the kernel build a dentry and inode per fd (about 2 KB of slab
    per connection, see the C reference's notes), so the once-a-second
    worker snapshots leave it out; a worker knows its connection count anyway.
    Returns {} when the process is gone or not inspectable, because status
    reporting must not fail just because a worker exited between two samples.
    """
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cpu = proc.cpu_times()
            out = {
                "rss_bytes": float(proc.memory_info().rss),
                "cpu_user_s": float(cpu.user),
                "cpu_system_s": float(cpu.system),
                "threads": float(proc.num_threads()),
            }
            if count_fds:
                out["fds"] = float(proc.num_fds())
            return out
    # AttributeError: num_fds does not exist on Windows.
    except (psutil.Error, OSError, AttributeError, ValueError):
        return {}


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
