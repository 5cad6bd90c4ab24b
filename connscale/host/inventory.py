"""Every limit of this host that bounds how many connections it can hold.

One reading, as a plain record: `connscale check` reasons about it
(`connscale.diagnose.budget`), agents send it to the hub in their
registration, and reports print it as the run's manifest. Reactor-free and
never raising: what cannot be read is None, which the budget reports as
"unknown" rather than as a limit of zero.
"""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from connscale.host.limits import NOFILE_CEILING
from connscale.host.resources import cpu_count
from connscale.host.sysctl import read_sysctl


@attrs.frozen
class HostLimits:
    """What one host allows. Counts are plain ints; None means "could not read"."""

    hostname: str = ""
    kernel: str = ""
    cores: int = 1                       # CPUs this process may run on (affinity)
    cpu_quota: float | None = None       # cores the cgroup allows (cpu.max / cfs_quota), None: no quota
    nofile_soft: int | None = None
    nofile_hard: int | None = None       # RLIMIT_NOFILE hard; workers raise soft to it
    nr_open: int | None = None           # fs.nr_open: ceiling of any hard limit
    file_max: int | None = None          # fs.file-max
    files_allocated: int | None = None   # first field of fs.file-nr
    port_range: tuple[int, int] | None = None   # net.ipv4.ip_local_port_range
    reserved_ports: str = ""             # net.ipv4.ip_local_reserved_ports, as written
    somaxconn: int | None = None
    tcp_max_syn_backlog: int | None = None
    syncookies: int | None = None
    abort_on_overflow: int | None = None
    tcp_tw_reuse: int | None = None
    tcp_mem: tuple[int, int, int] | None = None  # pages: min, pressure, max
    page_size: int = 4096
    mem_total: int | None = None         # bytes
    mem_available: int | None = None     # bytes
    cgroup_mem_limit: int | None = None  # bytes; None: no limit
    cgroup_mem_usage: int | None = None
    conntrack_max: int | None = None     # None: nf_conntrack not loaded
    conntrack_count: int | None = None

    @property
    def ephemeral_ports(self) -> int | None:
        if self.port_range is None:
            return None
        lo, hi = self.port_range
        return hi - lo + 1

    @property
    def effective_cores(self) -> float:
        """CPUs this host gives us: affinity, lowered by a cgroup quota."""
        cores = float(self.cores)
        return min(cores, self.cpu_quota) if self.cpu_quota else cores

    @property
    def usable_memory(self) -> int | None:
        """Bytes new connections may still take: MemAvailable, or less under a cgroup limit."""
        avail = self.mem_available
        if self.cgroup_mem_limit is not None and self.cgroup_mem_usage is not None:
            room = max(0, self.cgroup_mem_limit - self.cgroup_mem_usage)
            avail = room if avail is None else min(avail, room)
        return avail

    @property
    def nofile_ceiling(self) -> int | None:
        """The RLIMIT_NOFILE a worker ends up with (hard; nr_open when unlimited)."""
        hard = self.nofile_hard
        if hard is None:
            return None
        if hard == resource.RLIM_INFINITY or hard < 0:
            return min(self.nr_open or NOFILE_CEILING, NOFILE_CEILING)
        return hard

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/PB data (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in attrs.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "HostLimits":
        """Tolerant of missing and unknown keys: an older agent's reading still counts."""
        values: dict[str, Any] = {}
        for f in attrs.fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name in ("port_range", "tcp_mem") and value is not None:
                value = tuple(int(v) for v in value)
            values[f.name] = value
        return cls(**values)


def _ints(value: object, n: int) -> tuple[int, ...] | None:
    return value if isinstance(value, tuple) and len(value) == n else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) else None


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo in bytes (its kB values times 1024)."""
    out: dict[str, int] = {}
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    scale = 1024 if fields[1:2] == ["kB"] else 1
                    out[name.strip()] = int(fields[0]) * scale
    except OSError:
        pass
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _cgroup_paths(proc: str) -> dict[str, str]:
    """controller -> path of this process's cgroup ("" key: the v2 unified path)."""
    text = _read(os.path.join(proc, "self", "cgroup")) or ""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = parts[2]
    return out


def _cgroup_file(sys_root: str, paths: Mapping[str, str], controller: str, v1: str, v2: str) -> str | None:
    """A cgroup file of this process: the v1 hierarchy of `controller` first, then v2's."""
    base = os.path.join(sys_root, "fs", "cgroup")
    if controller in paths:
        text = _read(os.path.join(base, controller, paths[controller].lstrip("/"), v1))
        if text is not None:
            return text
    if "" in paths:
        # v2 alone is mounted at /sys/fs/cgroup; beside v1 (hybrid) at .../unified.
        for root in (base, os.path.join(base, "unified")):
            text = _read(os.path.join(root, paths[""].lstrip("/"), v2))
            if text is not None:
                return text
    return None


def read_cpu_quota(proc: str = "/proc", sys_root: str = "/sys") -> float | None:
    """Cores the cgroup lets this process use, or None without a quota."""
    paths = _cgroup_paths(proc)
    quota = _cgroup_file(sys_root, paths, "cpu", "cpu.cfs_quota_us", "cpu.max")
    if quota is None:
        return None
    if " " in quota:  # v2: "max 100000" or "50000 100000"
        quota, _, period = quota.partition(" ")
    else:
        period = _cgroup_file(sys_root, paths, "cpu", "cpu.cfs_period_us", "") or ""
    if quota.isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
        return int(quota) / int(period)
    return None  # "-1" (v1) or "max" (v2): no quota


def _cgroup_memory(proc: str, sys_root: str) -> tuple[int | None, int | None]:
    paths = _cgroup_paths(proc)
    # v1 reports "no limit" as a page-rounded 2**63 - 1; anything past 2**60 is that.
    limit_text = _cgroup_file(sys_root, paths, "memory", "memory.limit_in_bytes", "memory.max")
    usage_text = _cgroup_file(sys_root, paths, "memory", "memory.usage_in_bytes", "memory.current")
    limit = int(limit_text) if limit_text and limit_text.isdigit() else None
    if limit is not None and limit >= 1 << 60:
        limit = None
    usage = int(usage_text) if usage_text and usage_text.isdigit() else None
    return limit, (usage if limit is not None else None)


def read_host_limits(
    proc: str = "/proc",
    sys_root: str = "/sys",
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
) -> HostLimits:
    """Read every limit at once (a few dozen small /proc reads, well under a millisecond)."""
    sysctl_root = os.path.join(proc, "sys")

    def sysctl(name: str) -> Any:
        return read_sysctl(name, sysctl_root)

    try:
        soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        soft = hard = None  # type: ignore[assignment]
    file_nr = _ints(sysctl("fs.file-nr"), 3)
    conntrack_max = _int(sysctl("net.netfilter.nf_conntrack_max"))
    mem = read_meminfo(os.path.join(proc, "meminfo"))
    cg_limit, cg_usage = _cgroup_memory(proc, sys_root)
    reserved = sysctl("net.ipv4.ip_local_reserved_ports")
    port_range = _ints(sysctl("net.ipv4.ip_local_port_range"), 2)
    try:
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        page_size = 4096
    return HostLimits(
        hostname=socket.gethostname(),
        kernel=os.uname().release,
        cores=cpu_count(),
        cpu_quota=read_cpu_quota(proc, sys_root),
        nofile_soft=soft,
        nofile_hard=hard,
        nr_open=_int(sysctl("fs.nr_open")),
        file_max=_int(sysctl("fs.file-max")),
        files_allocated=file_nr[0] if file_nr else None,
        port_range=port_range,  # type: ignore[arg-type]
        reserved_ports=reserved if isinstance(reserved, str) else ("" if reserved is None else str(reserved)),
        somaxconn=_int(sysctl("net.core.somaxconn")),
        tcp_max_syn_backlog=_int(sysctl("net.ipv4.tcp_max_syn_backlog")),
        syncookies=_int(sysctl("net.ipv4.tcp_syncookies")),
        abort_on_overflow=_int(sysctl("net.ipv4.tcp_abort_on_overflow")),
        tcp_tw_reuse=_int(sysctl("net.ipv4.tcp_tw_reuse")),
        tcp_mem=_ints(sysctl("net.ipv4.tcp_mem"), 3),  # type: ignore[arg-type]
        page_size=page_size,
        mem_total=mem.get("MemTotal"),
        mem_available=mem.get("MemAvailable"),
        cgroup_mem_limit=cg_limit,
        cgroup_mem_usage=cg_usage,
        conntrack_max=conntrack_max,
        conntrack_count=_int(sysctl("net.netfilter.nf_conntrack_count")) if conntrack_max is not None else None,
    )
