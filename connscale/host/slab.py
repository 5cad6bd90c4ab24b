"""Kernel memory of the socket caches, from /proc/slabinfo.

An idle TCP connection costs its host a few kilobytes of kernel memory that no
process's RSS shows: the `TCP` socket itself (~2.3 KB), its inode
(`sock_inode_cache`), its `struct file` (`filp`), an epoll registration
(`eventpoll_epi`, `eventpoll_pwq`), and while handshakes are pending a
`request_sock_TCP`; closed ones wait in `tw_sock_TCP`. Buffered data is apart:
sockstat's TCP `mem` pages.

A cache's memory is its slabs times their pages (what it holds from the page
allocator, partly empty slabs included, as `slabtop` counts it). /proc/slabinfo
is usually readable by root only: None then, and the caller says so. The
kernel may merge caches of the same object size (SLUB aliases): a merged cache
is absent from the file and counted under the one it joined.
"""

from __future__ import annotations

import os

#: The caches a TCP connection occupies (those absent on a kernel are skipped).
SOCKET_CACHES = (
    "TCP", "TCPv6", "request_sock_TCP", "request_sock_TCPv6", "tw_sock_TCP", "tw_sock_TCPv6",
    "sock_inode_cache", "filp", "eventpoll_epi", "eventpoll_pwq",
)


def parse_slabinfo(text: str, page_size: int = 4096) -> dict[str, int]:
    """cache name -> bytes it holds (num_slabs x pages per slab x page size)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line or line.startswith(("slabinfo", "#")):
            continue
        head, _, rest = line.partition(" : ")
        fields = head.split()
        slabdata = rest.rpartition("slabdata")[2].split()
        try:
            pages_per_slab = int(fields[5])
            num_slabs = int(slabdata[1])
        except (IndexError, ValueError):
            continue
        out[fields[0]] = num_slabs * pages_per_slab * page_size
    return out


def read_slabinfo(path: str = "/proc/slabinfo") -> dict[str, int] | None:
    """Every cache's bytes, or None when /proc/slabinfo cannot be read (not root)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    try:
        page = os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        page = 4096
    return parse_slabinfo(text, page)


def socket_caches(slab: dict[str, int]) -> dict[str, int]:
    """The socket caches of a slabinfo reading (those this kernel has)."""
    return {name: slab[name] for name in SOCKET_CACHES if name in slab}
