"""What each failure cause means and what lifts it: the one table (STYLE rule 12).

Read by `advise` (the report's line per cause), by the walls (diagnose/walls.py: a wall's fixes
start from its cause's), by search mode's causes (diagnose/search.py) and rendered as the README's
failure-cause table (`readme_table`; tests/test_fixes.py holds the two together: paste what its
failure prints to bring the README up to date).

A fix that names a number the run measured (a backlog four times the effective one, the source
IP to add, a pid) is written where that number is, in the wall that measured it; the texts here
are the ones that hold whatever the numbers were.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = ["CAUSES", "CauseFix", "advise", "fix_of", "readme_table"]


@attrs.frozen
class CauseFix:
    #: The failure causes (``phase:cause``'s cause) this row explains.
    causes: tuple[str, ...]
    #: What they usually mean, in one clause.
    means: str
    #: What lifts them, most useful first.
    fix: tuple[str, ...]
    #: False for the walls that are no failure cause (search mode and the walls name them too).
    failure: bool = True


_ROWS = (
    CauseFix(("EMFILE",), "the process ran out of file descriptors (its RLIMIT_NOFILE)", (
        "more worker processes (--workers; client.workers or server.workers: auto sizes them by the fd budget)",
        "a higher hard limit before starting: ulimit -Hn 1048576 (systemd: LimitNOFILE=; /etc/security/limits.conf)",
    )),
    CauseFix(("ENFILE",), "the whole system ran out of file descriptors (fs.file-max)", (
        "sysctl -w fs.file-max=N, N twice the connections (four times on a host with both sides)",
        "or spread the load over more hosts",
    )),
    CauseFix(("EADDRNOTAVAIL", "EADDRINUSE"),
             "the ephemeral ports of one (source IP, server IP:port) tuple are exhausted (the original's 28,233)", (
                 "more source IPs (--source-ip 127.0.0.2-127.0.0.9, client.source_ips)",
                 "more server ports (server.ports)",
                 "sysctl -w net.ipv4.ip_local_port_range='1024 65535'",
             )),
    CauseFix(("ECONNREFUSED",), "nothing listens on the server port (the server or a server worker is down)", (
        "start the server, or check server.ports and client.server",
    )),
    CauseFix(("ECONNRESET",),
             "the peer reset the connection; during a ramp typically an overflowing accept queue (half-open "
             "connections, the original's finding 2; see ListenOverflows)", (
                 "a larger accept queue: --backlog (server.backlog) with net.core.somaxconn and "
                 "net.ipv4.tcp_max_syn_backlog",
                 "a slower ramp (--rate, scenario.rate)",
             )),
    CauseFix(("ETIMEDOUT",),
             "the SYN was not answered: the server's SYN backlog is full, a firewall drops packets, or the host "
             "is down", (
                 "check that the server host is up and no firewall drops SYNs",
                 "a slower ramp (--rate) or a larger net.ipv4.tcp_max_syn_backlog",
             )),
    CauseFix(("no_answer_from_server",), "no Pong within client.timeout: the server is too slow or overloaded", (
        "more server cores (server workers take one core each: server.workers: auto uses every core)",
        "fewer pings per second (a longer client.interval) or a longer client.timeout (--timeout), if the server "
        "is allowed to be that slow",
    )),
    CauseFix(("closed_by_peer",), "the server closed the connection", (
        "check the server's log: restarted, a worker lost, or a protocol error",
    )),
    CauseFix(("protocol_error",), "the peer spoke something else (see proto.*)", (
        "use the same framing on both sides (server.framing and client.framing: line or raw)",
    )),
    CauseFix(("worker_lost",), "the worker process holding the connection died (often out of memory or file "
             "descriptors)", (
                 "see the worker's last lines in the hub's or agent's log",
             )),
    CauseFix(("route_quota",), "every (source IP, server port) route is at its quota (client.per_route_max)", (
        "more source IPs (client.source_ips)",
        "more server ports (server.ports)",
    )),
    # Walls that no failure cause names by itself.
    CauseFix(("measuring_side",), "connscale's own client workers are saturated: what is measured is their delay", (
        "more agent hosts (clients: in the config; connections_start on each), so the clients stop sharing cores "
        "with each other and with the server",
        "a lower scenario.rate or a longer client.interval, if the point was the server's hold, not its speed",
    ), failure=False),
    CauseFix(("unknown",), "nothing the hub measures explains it", (
        "see the logs and the kernel counters (ListenOverflows, tcp_orphan) in the timeline and report.html",
    ), failure=False),
)

#: Every row by each cause it explains.
CAUSES: Mapping[str, CauseFix] = MappingProxyType({cause: row for row in _ROWS for cause in row.causes})


def fix_of(cause: str) -> CauseFix:
    """The row of `cause`; the ``unknown`` row for a cause without one."""
    return CAUSES.get(cause, CAUSES["unknown"])


def advise(cause: str) -> str:
    """What `cause` means and what lifts it, in one sentence."""
    row = CAUSES.get(cause)
    if row is None:
        return f"no specific advice for {cause}: {'; '.join(CAUSES['unknown'].fix)}."
    return f"{row.means}: {'; '.join(row.fix)}."


def readme_table() -> str:
    """The README's failure-cause table, as Markdown."""
    lines = ["| cause | usually means | what lifts it |", "|---|---|---|"]
    for row in _ROWS:
        if row.failure:
            causes = ", ".join(f"`{c}`" for c in row.causes)
            lines.append(f"| {causes} | {row.means} | {'; '.join(row.fix)} |")
    return "\n".join(lines)
