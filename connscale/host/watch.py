"""Following a server process through its life, and reading this host's counters.

`TargetWatch` holds on to one target across restarts: a `--pid` target is that
process (a reused pid is another process, and said so); a `--name` target is
re-resolved whenever the process it named is gone, so a restarted server is
found again under its new pid and the change is an event; a `children` target
is the children of a pid (connscale's own server workers under their hub). Each
`read()` gives this second's `TargetRow` and the events since the last one.
Reactor-free, never raising.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import attrs

from connscale.host import slab as slabinfo
from connscale.host import sockets
from connscale.host.inventory import read_meminfo
from connscale.host.kernel import read_netstat, read_sockstat
from connscale.host.observed import (
    MAX_PROCESSES,
    HostRow,
    ListenerRow,
    ProcessRow,
    TargetEvent,
    TargetRow,
)
from connscale.host.process import (
    PROC,
    ProcessReading,
    descendants,
    find_by_name,
    process_table,
    read_process,
    same_namespace,
)
from connscale.host.sysctl import read_sysctl

#: Seconds between scans of a known process's socket fds, and how many of its lowest fds
#: such a scan reads (listening sockets are opened at start: low numbers).
RESCAN = 30.0
RESCAN_FDS = 1024


@attrs.frozen
class TargetSpec:
    """What to watch: a pid, a process name, or the children of a pid."""

    pid: int | None = None
    name: str | None = None
    children: bool = False      # the pid's children only (not the pid itself)
    label: str = ""

    @property
    def how(self) -> str:
        return "name" if self.name else ("children" if self.children else "pid")

    def describe(self) -> str:
        if self.label:
            return self.label
        return self.name or f"pid {self.pid}"

    @classmethod
    def parse(cls, text: str) -> "TargetSpec":
        """`--observe PID|NAME`: digits are a pid, anything else a process name."""
        text = text.strip()
        if not text:
            raise ValueError("expected a pid or a process name")
        if text.isdigit():
            return cls(pid=int(text))
        if "/" in text or len(text) > 64:
            raise ValueError(f"expected a pid or a process name (like redis-server), got {text[:40]!r}")
        return cls(name=text)


class TargetWatch:
    def __init__(self, spec: TargetSpec, proc: str = PROC, fds: bool = True,
                 listeners: Callable[[], list[sockets.TcpSocket]] | None = None,
                 established: Callable[[set[int]], dict[int, int]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.proc = proc
        self.fds = fds
        self._listeners = listeners or (lambda: sockets.listeners(None if proc == PROC else proc))
        self._established = established or (
            lambda ports: sockets.established_by_port(ports, None if proc == PROC else proc))
        self.clock = clock
        #: pid -> (start ticks, when scanned, socket inodes): see host.process.socket_inodes on the cost.
        self._scanned: dict[int, tuple[int, float, frozenset[int]]] = {}
        self.root: int | None = None
        self._root_start = 0
        self._root_name = ""
        self._kids: dict[int, tuple[int, str]] = {}   # pid -> (start ticks, name)
        self._resolved_once = False

    @property
    def label(self) -> str:
        if self.spec.label:
            return self.spec.label
        return self.spec.name or self._root_name or f"pid {self.spec.pid}"

    # -- following the process -----------------------------------------------------------
    def _follow(self, table: dict[int, tuple[int, str, int]]) -> list[TargetEvent]:
        events: list[TargetEvent] = []
        if self.root is not None:
            now = table.get(self.root)
            if now is None or now[2] != self._root_start:
                old, name = self.root, self._root_name
                self.root = None
                found = self._resolve(table)
                if found is not None and self.spec.name:
                    events.append(TargetEvent("restarted", self.label, old, found, name))
                elif now is not None:
                    events.append(TargetEvent("replaced", self.label, old, None, now[1]))
                else:
                    events.append(TargetEvent("exited", self.label, old, None, name))
                return events
        if self.root is None:
            found = self._resolve(table)
            if found is not None and self._resolved_once and self.spec.name:
                events.append(TargetEvent("found", self.label, None, found, self._root_name))
            self._resolved_once = self._resolved_once or found is not None
        return events

    def _resolve(self, table: dict[int, tuple[int, str, int]]) -> int | None:
        if self.spec.name:
            roots = find_by_name(self.spec.name, self.proc, table)
            pid = roots[0] if roots else None
        else:
            pid = self.spec.pid if self.spec.pid in table and not self._resolved_once else None
        if pid is not None:
            self.root, self._root_start, self._root_name = pid, table[pid][2], table[pid][1]
        return pid

    def _members(self, table: dict[int, tuple[int, str, int]]) -> tuple[list[int], list[TargetEvent]]:
        if self.root is None:
            gone = [TargetEvent("child_exited", self.label, pid, None, name) for pid, (_, name) in self._kids.items()]
            self._kids = {}
            return [], gone if self.spec.children else []
        kids = descendants(self.root, table)[:MAX_PROCESSES]
        now = {pid: (table[pid][2], table[pid][1]) for pid in kids}
        events = [TargetEvent("child_exited", self.label, pid, None, name)
                  for pid, (start, name) in self._kids.items() if now.get(pid, (None,))[0] != start]
        if self._kids or self.spec.children:
            # The first reading's children are the target as found, not news.
            events += [TargetEvent("child_started", self.label, None, pid, name)
                       for pid, (start, name) in now.items()
                       if self._kids.get(pid, (None,))[0] != start and self._seen_kids]
        self._seen_kids = True
        self._kids = now
        members = kids if self.spec.children else [self.root, *kids]
        return members, events

    _seen_kids = False

    # -- one second ----------------------------------------------------------------------
    def read(self) -> tuple[TargetRow, list[TargetEvent]]:
        table = process_table(self.proc)
        events = self._follow(table)
        members, churn = self._members(table)
        events += churn
        readings = [r for r in (self._read(pid, table) for pid in members) if r is not None]
        problems = self._problems(readings)
        owner: dict[int, int] = {}
        for r in readings:
            for inode in self._scanned.get(r.pid, (0, 0.0, frozenset()))[2]:
                owner[inode] = r.pid
        self._scanned = {pid: v for pid, v in self._scanned.items() if pid in table}
        found = [s for s in self._listeners() if s.inode in owner] if owner else []
        counts = self._established({s.port for s in found}) if found else {}
        listening = [ListenerRow(s.address, s.port, s.rqueue, s.wqueue, owner[s.inode], counts.get(s.port, 0))
                     for s in found]
        rows = tuple(_row(r) for r in readings)
        alive = self.root is not None and bool(readings or self.spec.children)
        return TargetRow(self.label, self.spec.how, self.root, alive, rows, tuple(listening), problems), events

    def _read(self, pid: int, table: dict[int, tuple[int, str, int]]) -> ProcessReading | None:
        """One member, its socket fds scanned when first seen and every RESCAN s (lowest fds only)."""
        start = table[pid][2] if pid in table else -1
        known = self._scanned.get(pid)
        now = self.clock()
        scan: int | bool = False
        if known is None or known[0] != start:
            scan = True
        elif now - known[1] >= RESCAN:
            scan = RESCAN_FDS
        reading = read_process(pid, self.proc, self.fds, scan if self.fds else False)
        if reading is not None and scan is not False and reading.fds is not None:
            inodes = reading.socket_inodes if scan is True or known is None else reading.socket_inodes | known[2]
            self._scanned[pid] = (start, now, inodes)
        return reading

    def _problems(self, readings: list[ProcessReading]) -> tuple[str, ...]:
        if self.root is None:
            return (f"{self.label}: no such process" if not self._resolved_once else f"{self.label}: not running",)
        out: list[str] = []
        seen: set[str] = set()
        for r in readings:
            for what in r.unreadable:
                kind = what.split(":", 1)[0]
                if kind not in seen:
                    seen.add(kind)
                    out.append(f"pid {r.pid} ({r.name}): cannot read its {what}")
        if same_namespace(self.root, "net", self.proc) is False:
            out.append(f"pid {self.root} ({self._root_name}) is in another network namespace: its listening "
                       "sockets and this host's counters are not the ones this observer sees")
        return tuple(out[:16])


def _row(r: ProcessReading) -> ProcessRow:
    soft, hard = r.nofile or (None, None)
    return ProcessRow(
        pid=r.pid, ppid=r.ppid, name=r.name[:64], rss=r.rss, pss=r.pss, cpu_s=round(r.cpu_s, 3), threads=r.threads,
        fds=r.fds, nofile_soft=soft, nofile_hard=hard, limits={k: list(v) for k, v in r.limits.items()},
    )


def read_host(proc: str = PROC) -> HostRow:
    """This host's socket counters, socket slab memory, conntrack and free memory, in one reading."""
    net = os.path.join(proc, "net")
    sock = read_sockstat(os.path.join(net, "sockstat"))
    ext = read_netstat(os.path.join(net, "netstat"))
    sysctl_root = os.path.join(proc, "sys")

    def sysctl(name: str) -> int | None:
        value = read_sysctl(name, sysctl_root)
        return value if isinstance(value, int) else None

    tcp_mem = read_sysctl("net.ipv4.tcp_mem", sysctl_root)
    slab = slabinfo.read_slabinfo(os.path.join(proc, "slabinfo"))
    try:
        page = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        page = 4096
    return HostRow(
        hostname=socket.gethostname()[:255],
        sockets_used=sock.get("sockets_used"), tcp_inuse=sock.get("tcp_inuse"), tcp_orphan=sock.get("tcp_orphan"),
        tcp_tw=sock.get("tcp_tw"), tcp_alloc=sock.get("tcp_alloc"), tcp_mem_pages=sock.get("tcp_mem"),
        tcp_mem=tuple(tcp_mem) if isinstance(tcp_mem, tuple) and len(tcp_mem) == 3 else (),
        page_size=page, socket_slab=slabinfo.socket_caches(slab) if slab is not None else None,  # type: ignore[arg-type]
        listen_overflows=ext.get("ListenOverflows"), listen_drops=ext.get("ListenDrops"),
        syncookies_sent=ext.get("SyncookiesSent"), syncookies_recv=ext.get("SyncookiesRecv"),
        syncookies_failed=ext.get("SyncookiesFailed"),
        conntrack_count=sysctl("net.netfilter.nf_conntrack_count"),
        conntrack_max=sysctl("net.netfilter.nf_conntrack_max"),
        mem_available=read_meminfo(os.path.join(proc, "meminfo")).get("MemAvailable"),
        somaxconn=sysctl("net.core.somaxconn"),
    )
