"""What each failure cause usually means, and what lifts it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

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
        # TLS (net/tls.py); a failed handshake counts in phase connect on the side that saw it.
        "tls_unknown_ca": (
            "the server's certificate chains to no CA the client trusts: give client.tls.ca_file the CA "
            "that signed it (for a self-signed server, its own certificate), or client.tls.verify: false to test."
        ),
        "tls_hostname_mismatch": (
            "the server's certificate names neither client.tls.server_name nor the address dialled: "
            "set client.tls.server_name to a name it carries, or give the server a certificate for its address."
        ),
        "tls_cert_expired": "the server's certificate has expired: renew it (server.tls: auto makes a fresh one).",
        "tls_cert_not_yet_valid": (
            "the server's certificate is not valid yet: check the clocks of both hosts, or reissue it."
        ),
        "tls_cert_invalid": "the server's certificate fails verification: check its chain and extensions.",
        "tls_cert_rejected": (
            "the other end refused a certificate, or wanted one it was not sent: a server that asks for a "
            "client certificate needs client.tls.cert and client.tls.key it trusts; a client that refuses the "
            "server's needs its CA (client.tls.ca_file)."
        ),
        "tls_protocol_version": (
            "client and server share no TLS version (connscale speaks TLS 1.2 and 1.3): "
            "enable TLS 1.2 or 1.3 on the server."
        ),
        "tls_handshake_failure": (
            "client and server share no cipher, group or signature algorithm: check the server's TLS settings."
        ),
        "tls_peer_not_tls": (
            "one end does not speak TLS: a plain-text server spoken to in TLS, or a plain-text client of a TLS "
            "server; match client.tls (or the URL's scheme) to the server."
        ),
        "tls_closed_in_handshake": (
            "the server closed the connection during the TLS handshake: a plain-text server that gave up on "
            "the ClientHello, or a TLS server at a limit of its own; check its log."
        ),
        "tls_handshake_timeout": (
            "the TLS handshake did not finish within client.tls.handshake_timeout: an overloaded server, or "
            "a plain-text server waiting for a line; check the server, or raise the timeout."
        ),
        "tls_error": "a TLS record failed after the handshake (a broken or tampered stream); check the server's log.",
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
