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
    #: How the README names a family of causes (``http_400`` ... ``http_599``); empty: each cause.
    shown: str = ""


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
    # TLS (net/tls.py names them; a failed handshake counts in phase connect on the side that saw it).
    # Their `means` is the tls wall's headline, so it holds no colon.
    CauseFix(("tls_unknown_ca",), "the server's certificate chains to no CA the client trusts", (
        "give client.tls.ca_file the CA that signed it (for a self-signed server, its own certificate)",
        "or client.tls.verify: false to test",
    )),
    CauseFix(("tls_hostname_mismatch",),
             "the server's certificate names neither client.tls.server_name nor the address dialled", (
                 "set client.tls.server_name to a name it carries",
                 "or give the server a certificate for its address",
             )),
    CauseFix(("tls_cert_expired",), "the server's certificate has expired", (
        "renew it (server.tls: auto makes a fresh one)",
    )),
    CauseFix(("tls_cert_not_yet_valid",), "the server's certificate is not valid yet", (
        "check the clocks of both hosts, or reissue it",
    )),
    CauseFix(("tls_cert_invalid",), "the server's certificate fails verification", (
        "check its chain and extensions",
    )),
    CauseFix(("tls_cert_rejected",), "the other end refused a certificate, or wanted one it was not sent", (
        "a server that asks for a client certificate needs client.tls.cert and client.tls.key it trusts",
        "a client that refuses the server's needs its CA (client.tls.ca_file)",
    )),
    CauseFix(("tls_protocol_version",),
             "client and server share no TLS version (connscale speaks TLS 1.2 and 1.3)", (
                 "enable TLS 1.2 or 1.3 on the server",
             )),
    CauseFix(("tls_handshake_failure",), "client and server share no cipher, group or signature algorithm", (
        "check the server's TLS settings",
    )),
    CauseFix(("tls_peer_not_tls",),
             "one end does not speak TLS (a plain-text server spoken to in TLS, or a plain-text client of a "
             "TLS server)", (
                 "match client.tls (or the URL's scheme) to the server",
             )),
    CauseFix(("tls_closed_in_handshake",),
             "the server closed the connection during the TLS handshake (a plain-text server that gave up on "
             "the ClientHello, or a TLS server at a limit of its own)", (
                 "check the server's log",
             )),
    CauseFix(("tls_handshake_timeout",),
             "the TLS handshake did not finish within client.tls.handshake_timeout (an overloaded server, or "
             "a plain-text server waiting for a line)", (
                 "check the server, or raise the timeout",
             )),
    CauseFix(("tls_error",), "a TLS record failed after the handshake (a broken or tampered stream)", (
        "check the server's log",
    )),
    # What a protocol profile's server said or did (net/profiles; the walls name each server's cap
    # with its own numbers, diagnose/server_words.py).
    CauseFix(("handshake_timeout",), "a profile's session did not open within client.handshake_timeout", (
        "a slower ramp, a longer timeout, a faster server",
    )),
    CauseFix(("redis_maxclients", "redis_noauth", "redis_loading", "redis_error"),
             "a RESP error, classified by its words (kept, quoted)", (
                 "Redis's maxclients and its fd limit",
                 "a password",
                 "wait for loading",
             )),
    CauseFix(tuple(f"http_{code}" for code in range(400, 600)) + ("http_bad_status", "http_connection_close"),
             "the status the server answered (its status line kept), or a response that ends the connection", (
                 "the server's log",
                 "keep-alive settings",
             ), shown="`http_400` ... `http_599`, `http_bad_status`, `http_connection_close`"),
    CauseFix(("ws_bad_accept",) + tuple(f"ws_close_{code}" for code in range(1000, 1016)) + ("ws_close_other",),
             "a wrong Sec-WebSocket-Accept or subprotocol; a close frame with its code and reason", (
                 "the URL's path",
                 "the server's log",
             ), shown="`ws_bad_accept`, `ws_close_1000` ... `ws_close_1015`, `ws_close_other`"),
    CauseFix(tuple(f"connack_{code}" for code in range(1, 6)) + ("connack_other",),
             "an MQTT broker's CONNACK refusal (3 server unavailable, 4 bad user or password, 5 not authorized)", (
                 "the broker's max_connections, credentials, ACLs",
             ), shown="`connack_1` ... `connack_5`, `connack_other`"),
    CauseFix(("expect_mismatch",), "a custom answer that cannot match expect/expect_regex", (
        "the expectation, or the server",
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
            causes = row.shown or ", ".join(f"`{c}`" for c in row.causes)
            lines.append(f"| {causes} | {row.means} | {'; '.join(row.fix)} |")
    return "\n".join(lines)
