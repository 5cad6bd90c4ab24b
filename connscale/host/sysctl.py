"""sysctls that bound connections: reading /proc/sys defensively.

Reactor-free and never raising: an unreadable file becomes None or a default,
because these run at start-up and inside status reporting.
"""

from __future__ import annotations

import os

PROC_SYS = "/proc/sys"

# Linux's built-in default, so callers can still plan when /proc/sys is absent.
DEFAULT_EPHEMERAL_RANGE: tuple[int, int] = (32768, 60999)

SysctlValue = int | tuple[int, ...] | str


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
