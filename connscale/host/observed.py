"""What an observer reports every second: the server it watches and the host under it.

These records cross PB (observer -> hub) and land in the timeline, so they are
typed once here and read through their fields (`from_wire` on the way in).
They live in `host` because they are readings of this host and nothing else:
the hub (control), the diagnosis and the report read them from below.

A target is one process tree: the process named on the command line (`--pid`,
or `--name` resolved to the oldest process of that name whose parent is not
one too) and its descendants (nginx's workers), or only its children
(connscale's own server: the hub's workers, not the hub).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from connscale.records.base import Record, boolean, choice, field, integer, loose, nested, number, optional, seq, text

_BYTES = integer(0, 1 << 62)
_COUNT = integer(0, 1 << 40)
_OPT_COUNT = optional(_COUNT)
_LIMIT = optional(integer(0, 1 << 62))
#: Processes of one target reported (nginx with a worker per core; connscale's 256 workers).
MAX_PROCESSES = 512
MAX_LISTENERS = 256
MAX_TARGETS = 16
MAX_EVENTS = 64
#: Target events the hub keeps for the summary (the first ones: they explain the rest).
MAX_TARGET_EVENTS = 256


@attrs.frozen
class ProcessRow(Record):
    """One process of a target. None: not readable (see the target's `problems`)."""

    pid: int = field(integer(1))
    ppid: int = field(integer(0), default=0)
    name: str = field(text(64), default="")
    rss: int = field(_BYTES, default=0)
    pss: int | None = field(optional(_BYTES), default=None)
    cpu_s: float = field(number(0, 1e12), default=0.0)
    threads: int = field(_COUNT, default=0)
    fds: int | None = field(_OPT_COUNT, default=None)
    #: RLIMIT_NOFILE from /proc/PID/limits (None: unlimited or unreadable).
    nofile_soft: int | None = field(_LIMIT, default=None)
    nofile_hard: int | None = field(_LIMIT, default=None)
    #: Every limit read, key -> [soft, hard] (host.process.LIMIT_KEYS; null = unlimited).
    limits: dict[str, object] = field(loose(64, 2), factory=dict)


@attrs.frozen
class ListenerRow(Record):
    """A listening socket of the target, as `ss -ltn` shows it."""

    address: str = field(text(64))
    port: int = field(integer(0, 65535))
    #: Connections completed by the kernel and not yet accept()ed.
    queue: int = field(_COUNT, default=0)
    #: The most it holds: listen()'s backlog capped by net.core.somaxconn (None: not readable here).
    backlog: int | None = field(_OPT_COUNT, default=None)
    pid: int | None = field(optional(integer(1)), default=None)
    #: Established connections on its port (every listener of a SO_REUSEPORT port shows the port's total).
    established: int = field(_COUNT, default=0)

    @property
    def full(self) -> bool:
        return self.backlog is not None and self.queue >= self.backlog


@attrs.frozen
class TargetRow(Record):
    """One watched server at one second, with its processes summed up."""

    label: str = field(text(128))
    #: How it was named: "pid" or "name" (re-resolved on restart) or "children" (of a pid).
    how: str = field(choice("pid", "name", "children"), default="pid")
    pid: int | None = field(optional(integer(1)), default=None)
    alive: bool = field(boolean, default=False)
    processes: tuple[ProcessRow, ...] = field(seq(nested(ProcessRow), MAX_PROCESSES), default=())
    listeners: tuple[ListenerRow, ...] = field(seq(nested(ListenerRow), MAX_LISTENERS), default=())
    #: What could not be read, in one line each (permissions, another namespace).
    problems: tuple[str, ...] = field(seq(text(300), 16), default=())

    # -- sums over the processes (None when no process had it readable) -------------
    def _sum(self, name: str) -> int | None:
        values = [getattr(p, name) for p in self.processes if getattr(p, name) is not None]
        return sum(values) if values else None

    @property
    def fds(self) -> int | None:
        return self._sum("fds")

    @property
    def established(self) -> int | None:
        """Connections established on its listening ports (None: no listener found)."""
        ports = {lst.port: lst.established for lst in self.listeners}
        return sum(ports.values()) if ports else None

    @property
    def rss(self) -> int:
        return sum(p.rss for p in self.processes)

    @property
    def pss(self) -> int | None:
        return self._sum("pss")

    @property
    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.processes)

    @property
    def threads(self) -> int:
        return sum(p.threads for p in self.processes)

    def tightest_fds(self) -> ProcessRow | None:
        """The process closest to its open-file limit (the one a wall would name)."""
        limited = [p for p in self.processes if p.nofile_soft and p.fds is not None]
        return max(limited, key=lambda p: p.fds / p.nofile_soft) if limited else None  # type: ignore[operator]


@attrs.frozen
class HostRow(Record):
    """The observer's host: the kernel's socket counters, memory, conntrack."""

    hostname: str = field(text(255), default="")
    sockets_used: int | None = field(_OPT_COUNT, default=None)
    tcp_inuse: int | None = field(_OPT_COUNT, default=None)
    tcp_orphan: int | None = field(_OPT_COUNT, default=None)
    tcp_tw: int | None = field(_OPT_COUNT, default=None)
    tcp_alloc: int | None = field(_OPT_COUNT, default=None)
    #: Pages of TCP buffer memory now, and net.ipv4.tcp_mem (min, pressure, max) in pages.
    tcp_mem_pages: int | None = field(_OPT_COUNT, default=None)
    tcp_mem: tuple[int, ...] = field(seq(_COUNT, 3), default=())
    page_size: int = field(integer(1, 1 << 30), default=4096)
    #: Bytes of each socket slab cache (host.slab.SOCKET_CACHES); None: slabinfo unreadable.
    socket_slab: dict[str, object] | None = field(optional(loose(32, 1)), default=None)
    listen_overflows: int | None = field(_OPT_COUNT, default=None)
    listen_drops: int | None = field(_OPT_COUNT, default=None)
    syncookies_sent: int | None = field(_OPT_COUNT, default=None)
    syncookies_recv: int | None = field(_OPT_COUNT, default=None)
    syncookies_failed: int | None = field(_OPT_COUNT, default=None)
    conntrack_count: int | None = field(_OPT_COUNT, default=None)
    conntrack_max: int | None = field(_OPT_COUNT, default=None)
    mem_available: int | None = field(optional(_BYTES), default=None)
    somaxconn: int | None = field(_OPT_COUNT, default=None)

    @property
    def socket_slab_bytes(self) -> int | None:
        if self.socket_slab is None:
            return None
        return sum(int(v) for v in self.socket_slab.values() if isinstance(v, int))

    @property
    def tcp_mem_bytes(self) -> int | None:
        return None if self.tcp_mem_pages is None else self.tcp_mem_pages * self.page_size

    @property
    def tcp_pressure(self) -> bool:
        return bool(self.tcp_mem and self.tcp_mem_pages is not None and self.tcp_mem_pages >= self.tcp_mem[1])


@attrs.frozen
class TargetEvent(Record):
    """A watched process that ended, came back, or whose pid now names another process.

    `at` is on the observer's clock; the hub times events as they reach it."""

    kind: str = field(choice("exited", "restarted", "replaced", "found", "child_exited", "child_started"),
                      doc="exited, restarted, replaced, found, child_exited or child_started")
    label: str = field(text(128), doc="the target's label")
    pid: int | None = field(optional(integer(1)), default=None, doc="the process that ended or was replaced")
    new_pid: int | None = field(optional(integer(1)), default=None, doc="the process that came in its place")
    name: str = field(text(64), default="", doc="the process's name (what now holds a replaced pid)")

    def describe(self, at: float | None = None) -> str:
        """"redis-server (pid 41) exited at 41 s; restarted as pid 57", in the hub's seconds."""
        when = f" at {at:.0f} s" if at is not None else ""
        who = f"{self.label} (pid {self.pid})"
        if self.kind == "exited":
            return f"{who} exited{when}"
        if self.kind == "restarted":
            return f"{who} exited{when}; restarted as pid {self.new_pid}"
        if self.kind == "replaced":
            return f"{who} ended{when}; pid {self.pid} is now another process ({self.name or '?'})"
        if self.kind == "found":
            return f"{self.label} started{when} as pid {self.new_pid}"
        if self.kind == "child_exited":
            return f"{self.label}: process {self.pid} ({self.name or '?'}) exited{when}"
        return f"{self.label}: process {self.new_pid} ({self.name or '?'}) started{when}"


@attrs.frozen
class ObserverReport(Record):
    """One second of an observer: its targets, its host, what happened since the last report."""

    targets: tuple[TargetRow, ...] = field(seq(nested(TargetRow), MAX_TARGETS), default=())
    host: HostRow = field(nested(HostRow), factory=HostRow)
    events: tuple[TargetEvent, ...] = field(seq(nested(TargetEvent), MAX_EVENTS), default=())
    #: Milliseconds the reading took (the observer's own cost, at this connection count).
    read_ms: float = field(number(0, 1e9), default=0.0)
    #: The observer process's own rss_bytes, cpu_user_s, cpu_system_s (host.resources), as an
    #: agent reports its own: the hub counts it in connscale's cost.
    resources: dict[str, Any] = field(loose(16, 1), factory=dict)  # as the agent's (control/records.py)


# ----------------------------------------------------------------------------- in the hub's records

@attrs.frozen
class ObservedEvent(TargetEvent):
    """A target event as the hub keeps it: which observer saw it, when on the hub's clock, in words.

    The timeline's `target_events` (a line: those of its second) and summary.json's carry these."""

    observer: str = field(text(255), default="", doc="the observer that saw it")
    elapsed_s: float | None = field(optional(number(-1e9, 1e12)), default=None,
                                    doc="when it reached the hub, seconds since the hub started")
    text: str = field(text(600), default="", doc="what happened, in words (`TargetEvent.describe`)")


@attrs.frozen
class ObserverRow(Record):
    """One observer in a stats record or timeline line (`Stats.observers`, keyed by its name):
    its session, and its latest report without the events (those are `target_events`)."""

    connected: bool = field(boolean, default=False, doc="logged in to the hub now")
    login_host: str = field(text(255), default="", doc="the host it logged in from")
    lost_reason: str = field(text(2000), default="", doc="why its last session ended (empty while connected)")
    stale_s: float | None = field(optional(number(0, 1e9)), default=None,
                                  doc="0: its report is this second's; else the report's age in seconds; "
                                      "null before its first")
    targets: tuple[TargetRow, ...] = field(seq(nested(TargetRow), MAX_TARGETS), default=(),
                                           doc="the servers it watches (processes, listeners, problems)")
    host: HostRow | None = field(optional(nested(HostRow)), default=None,
                                 doc="its host's kernel counters, memory and conntrack (null before its first report)")
    read_ms: float | None = field(optional(number(0, 1e9)), default=None,
                                  doc="milliseconds its last reading took (its own cost)")

    @classmethod
    def of(cls, report: ObserverReport | None, *, connected: bool, login_host: str, lost_reason: str,
           stale_s: float | None) -> ObserverRow:
        if report is None:
            return cls(connected, login_host, lost_reason, stale_s)
        return cls(connected, login_host, lost_reason, stale_s, report.targets, report.host, report.read_ms)

    @classmethod
    def from_wire(cls, data: object) -> ObserverRow:
        if isinstance(data, Mapping) and "login_host" not in data:
            # Written before the row was a record: `host` was the login host until the first
            # report, whose host row then took its key.
            host = data.get("host")
            data = {**data, "login_host": host if isinstance(host, str) else "",
                    "host": None if isinstance(host, str) else host}
        return super().from_wire(data)
