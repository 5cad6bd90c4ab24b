"""Operating-system limits and kernel counters that bound how many connections a box holds.

Everything here is synchronous, reactor-free and defensive: these helpers run at
startup and inside status reporting, where an unreadable /proc file or a refused
setrlimit must become a message for the operator, never a crash.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Mapping
from types import MappingProxyType

import attrs
import psutil

__all__ = [
    "ADVICE",
    "DEFAULT_EPHEMERAL_RANGE",
    "FD_RESERVE",
    "NOFILE_CEILING",
    "NofileResult",
    "advise",
    "backlog_warning",
    "budget_advice",
    "connection_budget",
    "ephemeral_count",
    "ephemeral_range",
    "kernel_snapshot",
    "process_resources",
    "raise_nofile",
    "read_netstat",
    "read_nr_open",
    "read_sockstat",
    "read_sysctl",
]

PROC_SYS = "/proc/sys"

# Used when the hard limit is "unlimited": asking for RLIM_INFINITY is refused by
# Linux for RLIMIT_NOFILE, and a soft limit of millions makes some libraries that
# iterate over every possible fd (e.g. closing fds before exec) painfully slow.
NOFILE_CEILING = 1048576

# File descriptors the process needs besides connections: stdio, listening
# sockets, log files, the control channel, pipes to workers, psutil's /proc reads.
FD_RESERVE = 100

# Linux's built-in default, so callers can still plan when /proc/sys is absent.
DEFAULT_EPHEMERAL_RANGE: tuple[int, int] = (32768, 60999)

SysctlValue = int | tuple[int, ...] | str


@attrs.frozen
class NofileResult:
    """Outcome of raise_nofile; `soft` is what the process actually has now."""

    before_soft: int
    soft: int
    hard: int
    raised: bool
    error: str | None = None


# ---------------------------------------------------------------------------
# sysctl


def read_sysctl(name: str, root: str = PROC_SYS) -> SysctlValue | None:
    """Read a sysctl such as "net.core.somaxconn" from /proc/sys.

    Returns an int for single-number values, a tuple of ints for multi-number
    values (ip_local_port_range -> (lo, hi), tcp_mem -> (min, pressure, max)),
    the stripped text otherwise, and None when it cannot be read.
    """
    parts = name.split(".")
    # sysctl(8) writes a literal dot inside a component (eth0.100) as "/".
    if not name or any(p in ("", "..") for p in parts):
        return None
    path = os.path.join(root, *(p.replace("/", ".") for p in parts))
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read().strip()
    except OSError:
        # Missing on non-Linux or in restricted containers; callers fall back.
        return None
    fields = text.split()
    try:
        numbers = tuple(int(x) for x in fields)
    except ValueError:
        return text
    if len(numbers) == 1:
        return numbers[0]
    if numbers:
        return numbers
    return text


def _read_int_sysctl(name: str, root: str) -> int | None:
    value = read_sysctl(name, root)
    return value if isinstance(value, int) else None


def read_nr_open(root: str = PROC_SYS) -> int | None:
    """fs.nr_open: the largest RLIMIT_NOFILE the kernel lets any process have."""
    return _read_int_sysctl("fs.nr_open", root)


def ephemeral_range(root: str = PROC_SYS) -> tuple[int, int]:
    """net.ipv4.ip_local_port_range, or Linux's default when unreadable or bogus."""
    value = read_sysctl("net.ipv4.ip_local_port_range", root)
    if isinstance(value, tuple) and len(value) == 2:
        lo, hi = value
        if 0 < lo <= hi <= 65535:
            return (lo, hi)
    return DEFAULT_EPHEMERAL_RANGE


def ephemeral_count(root: str = PROC_SYS) -> int:
    """How many source ports one (source ip, server ip:port) route can use at once."""
    lo, hi = ephemeral_range(root)
    return hi - lo + 1


def backlog_warning(requested: int, somaxconn: int | None) -> str | None:
    """Say so when the kernel silently caps listen(2)'s backlog below what was asked for.

    The cap is silent, and a short accept queue shows up much later as resets
    and half-open connections under a fast ramp, so it is worth warning at startup.
    """
    if somaxconn is None or somaxconn >= requested:
        return None
    return (
        f"listen backlog {requested} is capped to net.core.somaxconn={somaxconn}; "
        f"raise it with sysctl -w net.core.somaxconn={requested}"
    )


# ---------------------------------------------------------------------------
# RLIMIT_NOFILE


def raise_nofile(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
    read_nr_open: Callable[[], int | None] = read_nr_open,
) -> NofileResult:
    """Raise the RLIMIT_NOFILE soft limit as far as the hard limit allows.

    Every connection costs a file descriptor and the usual soft limit (1024)
    is far below what a load test needs; raising soft up to hard needs no
    privilege. Never raises: a refusal is recorded in `error` so the caller
    can report it alongside the resulting connection budget.
    """
    try:
        before_soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as e:
        return NofileResult(0, 0, 0, raised=False, error=f"getrlimit(RLIMIT_NOFILE) failed: {e}")

    if hard == resource.RLIM_INFINITY:
        # The kernel refuses an infinite NOFILE; nr_open is the real ceiling.
        nr_open = _safe_call(read_nr_open)
        target = min(nr_open, NOFILE_CEILING) if nr_open and nr_open > 0 else NOFILE_CEILING
    else:
        target = hard

    if before_soft == resource.RLIM_INFINITY or before_soft >= target:
        return NofileResult(before_soft, before_soft, hard, raised=False)

    try:
        setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as e:
        return NofileResult(
            before_soft,
            before_soft,
            hard,
            raised=False,
            error=f"setrlimit(RLIMIT_NOFILE, ({target}, {hard})) failed: {e}",
        )
    return NofileResult(before_soft, target, hard, raised=True)


def _safe_call(fn: Callable[[], int | None]) -> int | None:
    # The reader is injectable, so guard the "never raises" promise here too.
    try:
        return fn()
    except Exception:
        return None


def connection_budget(soft: int, reserve: int = FD_RESERVE) -> int:
    """Connections one process can hold under a soft NOFILE limit of `soft`."""
    return max(0, soft - reserve)


def budget_advice(wanted: int, budget: int, hard: int) -> str | None:
    """One sentence explaining how to get `wanted` connections when the fd budget is short."""
    if wanted <= budget:
        return None
    if budget > 0:
        workers = math.ceil(wanted / budget)
        more_workers = f"run more worker processes (--workers {workers} or more)"
    else:
        more_workers = "run more worker processes (--workers N)"
    return (
        f"this process can hold only {budget} connections (RLIMIT_NOFILE hard limit {hard}), "
        f"not the {wanted} wanted: {more_workers}, "
        "or raise the hard limit (ulimit -Hn, LimitNOFILE= in systemd, "
        "/etc/security/limits.conf) if the system allows."
    )


# ---------------------------------------------------------------------------
# kernel counters


def read_netstat(path: str = "/proc/net/netstat", section: str = "TcpExt") -> dict[str, int]:
    """Counters of one section of /proc/net/netstat (header line then value line).

    TcpExt holds the accept-queue evidence (ListenOverflows, ListenDrops,
    TCPAbortOnOverflow) that explains resets seen by clients during a ramp.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    prefix = section + ":"
    rows = [line.split()[1:] for line in lines if line.startswith(prefix)]
    out: dict[str, int] = {}
    # Rows come in pairs: names, then values; tolerate a truncated file.
    for names, values in zip(rows[0::2], rows[1::2]):
        for name, value in zip(names, values):
            try:
                out[name] = int(value)
            except ValueError:
                continue
    return out


def read_sockstat(path: str = "/proc/net/sockstat") -> dict[str, int]:
    """/proc/net/sockstat flattened to "<protocol>_<field>" keys (tcp_inuse, sockets_used, ...)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out: dict[str, int] = {}
    for line in lines:
        head, sep, rest = line.partition(":")
        if not sep:
            continue
        proto = head.strip().lower()
        fields = rest.split()
        for name, value in zip(fields[0::2], fields[1::2]):
            try:
                out[f"{proto}_{name}"] = int(value)
            except ValueError:
                continue
    return out


# snapshot key -> (source, key in that source); tcp_mem is counted in pages.
_SNAPSHOT_KEYS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "tcp_inuse": ("sockstat", "tcp_inuse"),
        "tcp_tw": ("sockstat", "tcp_tw"),
        "tcp_orphan": ("sockstat", "tcp_orphan"),
        "tcp_mem_pages": ("sockstat", "tcp_mem"),
        "listen_overflows": ("netstat", "ListenOverflows"),
        "listen_drops": ("netstat", "ListenDrops"),
        "abort_on_overflow": ("netstat", "TCPAbortOnOverflow"),
    }
)


def kernel_snapshot(
    netstat_path: str = "/proc/net/netstat",
    sockstat_path: str = "/proc/net/sockstat",
) -> dict[str, int]:
    """The kernel counters worth showing next to a connection count.

    Keys missing from the sources are left out rather than reported as 0, so
    "not available here" is not mistaken for "nothing happened".
    """
    sources = {"netstat": read_netstat(netstat_path), "sockstat": read_sockstat(sockstat_path)}
    out: dict[str, int] = {}
    for key, (source, name) in _SNAPSHOT_KEYS.items():
        value = sources[source].get(name)
        if value is not None:
            out[key] = value
    return out


# ---------------------------------------------------------------------------
# failure advice

ADVICE: Mapping[str, str] = MappingProxyType(
    {
        "EMFILE": (
            "the process ran out of file descriptors (per-process RLIMIT_NOFILE): "
            "run more worker processes with --workers or raise the hard limit "
            "(ulimit -Hn, LimitNOFILE= in systemd, /etc/security/limits.conf)."
        ),
        "ENFILE": (
            "the whole system ran out of file descriptors: raise fs.file-max "
            "(sysctl -w fs.file-max=N) or run part of the load on another host."
        ),
        "EADDRNOTAVAIL": (
            "ephemeral ports are exhausted for a (source ip, server ip:port) tuple: "
            "add source IPs with --source-ip 127.0.0.2-127.0.0.9, listen on more server ports, "
            "or widen net.ipv4.ip_local_port_range."
        ),
        "EADDRINUSE": (
            "no free local port for a (source ip, server ip:port) tuple, as ephemeral ports are exhausted: "
            "add source IPs with --source-ip 127.0.0.2-127.0.0.9, listen on more server ports, "
            "or widen net.ipv4.ip_local_port_range."
        ),
        "ECONNREFUSED": (
            "nothing is listening on the server port: the server is not running "
            "or a server worker is down; check the server status and logs."
        ),
        "ECONNRESET": (
            "the peer reset the connection, often because the accept queue overflowed and left "
            "half-open connections (check ListenOverflows): raise --backlog together with "
            "net.core.somaxconn and net.ipv4.tcp_max_syn_backlog, and pace the ramp with --rate."
        ),
        "ETIMEDOUT": (
            "the SYN was not answered: the server's SYN backlog is full, a firewall drops packets, "
            "or the host is down; lower --rate or raise net.ipv4.tcp_max_syn_backlog."
        ),
        "ENETUNREACH": (
            "no route to the server's network: check the server address and the client's routes."
        ),
        "EHOSTUNREACH": (
            "the server host is unreachable: check that it is up and that no firewall rejects the traffic."
        ),
        "no_answer_from_server": (
            "the server did not answer a ping in time because it is too slow or overloaded: "
            "add server workers, lower the load, or raise --timeout."
        ),
        "closed_by_peer": (
            "the server closed the connection: it restarted, a server worker was lost, "
            "or it saw a protocol error; check the server log."
        ),
        "protocol_error": (
            "a peer sent data that breaks the line protocol: check that client and server "
            "use the same framing and connscale version."
        ),
        "worker_lost": (
            "a worker process exited and its connections were lost: check its log for the "
            "cause (often running out of memory or file descriptors)."
        ),
    }
)


def advise(cause: str) -> str:
    """Explanation and fix for a failure cause; a generic pointer for causes without advice."""
    return ADVICE.get(
        cause,
        f"no specific advice for {cause}: check the client and server logs "
        "and the kernel counters (ListenOverflows, tcp_orphan).",
    )


# ---------------------------------------------------------------------------
# process resources


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
