"""The server's side of a run, as its observer saw it: which wall it stands at now.

Reads the `observers` rows of a timeline second (host.observed records) and names
a server-side wall when the numbers say so by themselves: the server process at
its open-file limit, an accept queue at its backlog, the host's conntrack table
or TCP memory at their limits, its memory nearly gone; or the server process
gone. `name_wall` prefers these to what the clients alone can tell (a reset, a
timeout), and the incident detector opens one when it lasts `SUSTAIN` seconds
even before a client fails. The findings themselves are in `walls`.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from connscale.diagnose.observer_walls import (
    host_conntrack,
    host_tcp_memory,
    server_accept_queue_full,
    server_fd_limit,
    server_gone,
    server_memory,
)
from connscale.diagnose.window import Finding
from connscale.host.observed import HostRow, ProcessRow, TargetRow
from connscale.metrics.records import Stats

#: Seconds a server-side condition lasts before it is an incident by itself.
SUSTAIN = 2
#: Below this MemAvailable the server's host is out of memory for new connections.
LOW_MEMORY = 256 * 2**20
#: Target events that mean the server itself went away (a worker's churn is worker_lost's).
GONE = frozenset({"exited", "restarted", "replaced"})


@attrs.frozen
class Observed:
    """One observer's rows of one second."""

    name: str
    targets: tuple[TargetRow, ...] = ()
    host: HostRow = attrs.Factory(HostRow)


def observed_rows(record: Stats) -> tuple[Observed, ...]:
    """The connected observers of a timeline line or stats record that have reported."""
    return tuple(Observed(name, row.targets, row.host) for name, row in sorted(record.observers.items())
                 if row.connected and row.host is not None)


def at_fd_limit(p: ProcessRow) -> bool:
    """Within a few descriptors of its soft RLIMIT_NOFILE (Redis keeps 32 for itself)."""
    if not p.nofile_soft or p.fds is None:
        return False
    return p.fds >= p.nofile_soft - max(40, int(p.nofile_soft * 0.02))


def server_side(observed: Sequence[Observed]) -> Finding | None:
    """The server-side wall the observers' numbers show now, if any."""
    for o in observed:
        for target in o.targets:
            if not target.alive:
                continue
            tight = target.tightest_fds()
            if tight is not None and at_fd_limit(tight):
                return server_fd_limit(target, tight)
            for listener in target.listeners:
                if listener.full:
                    return server_accept_queue_full(target, listener, o.host.somaxconn)
        h = o.host
        if h.conntrack_max and h.conntrack_count is not None and h.conntrack_count >= 0.95 * h.conntrack_max:
            return host_conntrack(h)
        if h.tcp_pressure:
            return host_tcp_memory(h)
        if h.mem_available is not None and h.mem_available < LOW_MEMORY:
            return server_memory(h)
    return None


def gone(record: Stats) -> Finding | None:
    """The observed server exited, restarted or was replaced in this second."""
    for event in record.target_events:
        if event.kind in GONE:
            return server_gone(event.text or event.label)
    return None


class ServerWatch:
    """Server-side walls that last: fed one second at a time, says which opened."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def observe(self, record: Stats, observed: Sequence[Observed]) -> list[Finding]:
        out = []
        left = gone(record)
        if left is not None:
            out.append(left)
        finding = server_side(observed)
        key = f"{finding.wall}:{finding.side}" if finding is not None else ""
        self._seen = {key: self._seen.get(key, 0) + 1} if key else {}
        if finding is not None and self._seen[key] >= SUSTAIN:
            out.append(finding)
        return out
