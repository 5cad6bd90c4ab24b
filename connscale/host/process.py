"""Another process, read from /proc: its memory, CPU, fds, sockets and limits.

The observer (`connscale observe`) watches a server it did not start: Redis,
nginx, connscale's own server workers. Everything here reads one process at a
time from a /proc tree (injectable, so tests feed a fake one), never raises for a
process that vanished or that we may not inspect, and says which part it could
not read instead (`ProcessReading.unreadable`), because "could not read" must
never pass for "zero".

Why not psutil: it reads the same files, but not smaps_rollup's Pss or the
socket inodes behind /proc/PID/fd in one pass, and the observer needs both.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

import attrs

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
PROC = "/proc"

#: /proc/PID/limits line: a name padded to 26 columns, soft, hard, and a unit.
_LIMIT = re.compile(r"^(?P<name>\S.*?)\s{2,}(?P<soft>\S+)\s+(?P<hard>\S+)(?:\s+\S+)?\s*$")

#: /proc/PID/limits names -> our short keys (the ones a connection count meets).
LIMIT_KEYS = {
    "Max open files": "nofile",
    "Max processes": "nproc",
    "Max address space": "as",
    "Max resident set": "rss",
    "Max locked memory": "memlock",
    "Max data size": "data",
}


@attrs.frozen
class ProcessReading:
    """One process at one moment. None: could not be read (see `unreadable`)."""

    pid: int
    ppid: int
    name: str                      # comm (at most 15 characters)
    start_ticks: int               # since boot: tells a reused pid from the process we knew
    rss: int                       # bytes
    cpu_s: float                   # user + system seconds since it started
    threads: int
    pss: int | None = None         # bytes, from smaps_rollup (needs ptrace access)
    fds: int | None = None
    #: Inodes of its socket fds, when scanned (to find its listening sockets).
    socket_inodes: frozenset[int] = frozenset()
    #: (soft, hard) by LIMIT_KEYS name; None stands for unlimited.
    limits: dict[str, tuple[int | None, int | None]] = attrs.field(factory=dict)
    #: What could not be read, each "what: why" (permissions, a vanished process).
    unreadable: tuple[str, ...] = ()

    @property
    def nofile(self) -> tuple[int | None, int | None] | None:
        return self.limits.get("nofile")


def _read(path: str, binary: bool = False) -> bytes | str | None:
    try:
        with open(path, "rb" if binary else "r", encoding=None if binary else "utf-8",
                  errors=None if binary else "replace") as f:
            return f.read()
    except OSError:
        return None


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def parse_stat(text: bytes) -> tuple[str, int, int, int, float, int] | None:
    """(comm, ppid, start_ticks, rss_pages, cpu_s, threads) from /proc/PID/stat."""
    try:
        left, right = text.index(b"("), text.rindex(b")")
        comm = text[left + 1:right].decode("utf-8", "replace")
        fields = text[right + 2:].split()
        return (comm, int(fields[1]), int(fields[19]), int(fields[21]),
                (int(fields[11]) + int(fields[12])) / _TICK, int(fields[17]))
    except (ValueError, IndexError):
        return None


def parse_limits(text: str) -> dict[str, tuple[int | None, int | None]]:
    """/proc/PID/limits -> {key: (soft, hard)}, None for "unlimited"."""
    out: dict[str, tuple[int | None, int | None]] = {}
    for line in text.splitlines()[1:]:
        m = _LIMIT.match(line)
        if not m or m["name"] not in LIMIT_KEYS:
            continue

        def value(v: str) -> int | None:
            return None if v == "unlimited" else int(v) if v.isdigit() else None

        out[LIMIT_KEYS[m["name"]]] = (value(m["soft"]), value(m["hard"]))
    return out


def parse_pss(text: str) -> int | None:
    """Pss in bytes from /proc/PID/smaps_rollup."""
    for line in text.splitlines():
        if line.startswith("Pss:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def socket_inodes(pid: int, proc: str = PROC, lowest: int | None = None) -> frozenset[int]:
    """Inodes of the socket fds of `pid` (of its `lowest` fds only, when given).

    One readlink per fd, ~30 us each: at 50,000 connections a whole scan takes over a second,
    so the observer scans a process once when it first sees it and later only its lowest fds,
    where listening sockets (opened at start) live. Raises OSError when the fds are not ours."""
    base = os.path.join(proc, str(pid), "fd")
    names = os.listdir(base)
    if lowest is not None and len(names) > lowest:
        names = sorted(names, key=lambda n: int(n) if n.isdigit() else 1 << 30)[:lowest]
    inodes = set()
    for name in names:
        try:
            target = os.readlink(os.path.join(base, name))
        except OSError:
            continue  # closed between listdir and readlink
        if target.startswith("socket:["):
            try:
                inodes.add(int(target[8:-1]))
            except ValueError:
                continue
    return frozenset(inodes)


def count_fds(pid: int, proc: str = PROC) -> int:
    """Open fds of `pid` (one getdents, no readlink). Raises OSError when they are not ours to list."""
    return len(os.listdir(os.path.join(proc, str(pid), "fd")))


def read_process(pid: int, proc: str = PROC, fds: bool = True, scan: int | bool = False) -> ProcessReading | None:
    """The process `pid`, or None when it does not exist (any more). `scan`: also the inodes of its
    socket fds (True: every fd; a number: its lowest that many; False: none)."""
    raw = _read(os.path.join(proc, str(pid), "stat"), binary=True)
    stat = parse_stat(raw) if isinstance(raw, bytes) else None
    if stat is None:
        return None
    comm, ppid, start, rss_pages, cpu_s, threads = stat
    unreadable: list[str] = []
    pss = None
    try:
        with open(os.path.join(proc, str(pid), "smaps_rollup"), encoding="ascii", errors="replace") as f:
            pss = parse_pss(f.read())
    except OSError as e:
        unreadable.append(f"pss: {_why(e)}")
    limits_text = _read(os.path.join(proc, str(pid), "limits"))
    limits = parse_limits(limits_text) if isinstance(limits_text, str) else {}
    if not limits:
        unreadable.append("limits: unreadable")
    count: int | None = None
    inodes: frozenset[int] = frozenset()
    if fds:
        try:
            count = count_fds(pid, proc)
            if scan is not False:
                inodes = socket_inodes(pid, proc, None if scan is True else int(scan))
        except OSError as e:
            unreadable.append(f"fds: {_why(e)}")
    return ProcessReading(pid=pid, ppid=ppid, name=comm, start_ticks=start, rss=rss_pages * _PAGE, cpu_s=cpu_s,
                          threads=threads, pss=pss, fds=count, socket_inodes=inodes, limits=limits,
                          unreadable=tuple(unreadable))


def _pids(proc: str) -> Iterable[int]:
    try:
        names = os.listdir(proc)
    except OSError:
        return ()
    return (int(n) for n in names if n.isdigit())


def process_table(proc: str = PROC) -> dict[int, tuple[int, str, int]]:
    """pid -> (ppid, comm, start_ticks) of every process we can see (one small read each)."""
    out = {}
    for pid in _pids(proc):
        raw = _read(os.path.join(proc, str(pid), "stat"), binary=True)
        stat = parse_stat(raw) if isinstance(raw, bytes) else None
        if stat is not None:
            out[pid] = (stat[1], stat[0], stat[2])
    return out


def descendants(pid: int, table: dict[int, tuple[int, str, int]]) -> list[int]:
    """Children, grandchildren, ... of `pid` in a `process_table`, in pid order."""
    kids: dict[int, list[int]] = {}
    for child, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(child)
    out, todo = [], list(kids.get(pid, ()))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return sorted(out)


def _argv0(pid: int, proc: str) -> str:
    raw = _read(os.path.join(proc, str(pid), "cmdline"), binary=True)
    if not isinstance(raw, bytes) or not raw:
        return ""
    first = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    # redis-server rewrites its argv into one string: "redis-server *:6379".
    return os.path.basename(first.split(" ", 1)[0])


def find_by_name(name: str, proc: str = PROC, table: dict[int, tuple[int, str, int]] | None = None) -> list[int]:
    """Processes called `name` (their comm, or the file name of their argv[0]) whose parent is not
    called so too: nginx's master, not its workers. Oldest first."""
    table = process_table(proc) if table is None else table
    comm = name[:15]
    # comm is cut to 15 characters: a longer name must match argv[0] too.
    matches = {pid for pid, (_, c, _) in table.items()
               if c == comm and (len(name) <= 15 or _argv0(pid, proc) == name)}
    if not matches:
        matches = {pid for pid in table if _argv0(pid, proc) == name}
    roots = [pid for pid in matches if table[pid][0] not in matches]
    return sorted(roots, key=lambda p: (table[p][2], p))


def same_namespace(pid: int, kind: str = "net", proc: str = PROC) -> bool | None:
    """Is `pid` in our namespace of `kind`? None when it cannot be told (no permission)."""
    try:
        return os.readlink(os.path.join(proc, str(pid), "ns", kind)) == os.readlink(
            os.path.join(proc, "self", "ns", kind))
    except OSError:
        return None
