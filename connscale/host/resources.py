"""Resources of a process (memory, CPU time) and of this host (cores)."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def process_resources(pid: int | None = None, count_fds: bool = False) -> dict[str, float]:
    """Memory, CPU time, threads (and on request fds) of a process (default: this one).

    On Linux this reads one file, /proc/PID/stat (every worker does it once a
    second, and a worker should not import psutil for it: ~1 MB of RSS each,
    and a hundred workers at a million connections). Elsewhere, psutil.

    Counting fds lists /proc/PID/fd: at 15,000 sockets that blocks for ~15 ms
    and makes the kernel build a dentry and inode per fd (about 2 KB of slab
    per connection, see the C reference's notes), so the once-a-second
    worker snapshots leave it out; a worker knows its connection count anyway.
    Returns {} when the process is gone or not inspectable, because status
    reporting must not fail just because a worker exited between two samples.
    """
    try:
        with open(f"/proc/{pid or 'self'}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return _psutil_resources(pid, count_fds) if not os.path.isdir("/proc/self") else {}
    # Fields after the command name, which may itself hold spaces or parentheses.
    fields = stat[stat.rindex(b")") + 2:].split()
    out = {
        "rss_bytes": float(int(fields[21]) * _PAGE),
        "cpu_user_s": int(fields[11]) / _TICK,
        "cpu_system_s": int(fields[12]) / _TICK,
        "threads": float(int(fields[17])),
    }
    if count_fds:
        try:
            out["fds"] = float(len(os.listdir(f"/proc/{pid or 'self'}/fd")))
        except OSError:
            pass
    return out


def process_stopped(pid: int) -> bool | None:
    """Is the process stopped (SIGSTOP, a debugger), rather than running or waiting?

    A worker that does not answer its supervisor is either stopped or starved
    (runnable, but given too little CPU to reach its loop in time); only the
    kernel's run state tells the two apart. None when it cannot be read (gone,
    or no /proc), so the caller keeps its old judgement.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
    # T: stopped by a signal; t: stopped by a tracer (a debugger).
    return state in (b"T", b"t")


def _psutil_resources(pid: int | None, count_fds: bool) -> dict[str, float]:
    import psutil

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
