"""Kernel counters worth showing next to a connection count (/proc/net)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType


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
        "tcp_alloc": ("sockstat", "tcp_alloc"),
        "sockets_used": ("sockstat", "sockets_used"),
        "listen_overflows": ("netstat", "ListenOverflows"),
        "listen_drops": ("netstat", "ListenDrops"),
        "abort_on_overflow": ("netstat", "TCPAbortOnOverflow"),
        # SYNs sent again: a peer's SYN queue or accept queue dropping ours.
        "syn_retrans": ("netstat", "TCPSynRetrans"),
        "tcp_timeouts": ("netstat", "TCPTimeouts"),
        "syncookies_sent": ("netstat", "SyncookiesSent"),
    }
)


def kernel_snapshot(
    netstat_path: str = "/proc/net/netstat",
    sockstat_path: str = "/proc/net/sockstat",
    meminfo_path: str = "/proc/meminfo",
) -> dict[str, int]:
    """The kernel counters worth showing next to a connection count.

    Keys missing from the sources are left out rather than reported as 0, so
    "not available here" is not mistaken for "nothing happened". Counters are
    per network namespace: a hub in a namespace sees its own.
    """
    sources = {"netstat": read_netstat(netstat_path), "sockstat": read_sockstat(sockstat_path)}
    out: dict[str, int] = {}
    for key, (source, name) in _SNAPSHOT_KEYS.items():
        value = sources[source].get(name)
        if value is not None:
            out[key] = value
    available = _mem_available(meminfo_path)
    if available is not None:
        out["mem_available_bytes"] = available
    return out


def _mem_available(path: str) -> int | None:
    # MemAvailable only: a whole meminfo parse each second would be wasted.
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None
