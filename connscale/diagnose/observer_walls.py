"""The server's side as an observer sees it (`connscale observe`): its walls in words.

Each reads the observer's rows (host.observed) of the second the wall was met
(diagnose/observed.py decides when one lasts); the words name the process, its
pid and the number the kernel holds it to, so the fix can be exact.
"""

from __future__ import annotations

from connscale.diagnose.window import Finding
from connscale.host.observed import HostRow, ListenerRow, ProcessRow, TargetRow


def _who(target: TargetRow, pid: int | None, name: str) -> str:
    return f"{target.label} (pid {pid})" if target.label == name or not name else \
        f"{target.label}: {name} (pid {pid})"


def server_fd_limit(target: TargetRow, process: ProcessRow) -> Finding:
    """The server process is at its RLIMIT_NOFILE: new connections need a descriptor it cannot have."""
    soft, hard = process.nofile_soft or 0, process.nofile_hard
    want = max(65536, soft * 4)
    who = _who(target, process.pid, process.name)
    evidence = [f"{who} holds {process.fds:,} open files under its Max open files {soft:,} "
                f"(hard {hard if hard is not None else 'unlimited'}), read by the observer from /proc/{process.pid}/limits"]
    if target.established is not None:
        evidence.append(f"{target.established:,} connections established on its listening ports")
    return Finding(
        "fd_process", "server",
        f"the server process {who} reached its open-file limit (Max open files {soft:,})",
        tuple(evidence),
        (f"raise the server's limit: under systemd LimitNOFILE={want} in its unit's [Service] section, then "
         "systemctl daemon-reload and restart it",
         f"started by hand: ulimit -n {want} in its shell first (above the hard limit: ulimit -Hn, "
         "/etc/security/limits.conf)",
         f"on the running process: prlimit --pid {process.pid} --nofile={want}:{want} (a server that sized itself "
         "at start, as Redis sizes maxclients, still needs a restart)",
         # nginx sets its workers' limit itself: the unit's limit alone does not reach them.
         *([f"nginx: worker_rlimit_nofile {want}; in nginx.conf (and worker_connections below it)"]
           if "nginx" in f"{process.name} {target.label}" else [])),
    )


def server_accept_queue_full(target: TargetRow, listener: ListenerRow, somaxconn: int | None) -> Finding:
    """The server's listening socket holds as many completed connections as its backlog allows."""
    who = _who(target, listener.pid, "")
    evidence = [f"port {listener.port} of {who}: accept queue {listener.queue:,} of {listener.backlog:,} "
                "(as ss -ltn shows it: Recv-Q of Send-Q), read by the observer",
                f"net.core.somaxconn {somaxconn if somaxconn is not None else '?'} caps every listen() backlog"]
    bigger = max(4096, (listener.backlog or 0) * 4)
    return Finding(
        "accept_queue", "server",
        f"the server's accept queue is full on port {listener.port} ({listener.queue:,} of {listener.backlog:,}): "
        "it does not accept() as fast as clients connect",
        tuple(evidence),
        (f"a larger backlog in the server (Redis tcp-backlog, nginx listen ... backlog=, server.backlog) with "
         f"sysctl -w net.core.somaxconn={bigger} net.ipv4.tcp_max_syn_backlog={bigger}",
         "a slower ramp (scenario.rate), or more server processes accepting"),
    )


def server_memory(host: HostRow) -> Finding:
    return Finding(
        "memory", "server",
        f"the server's host is running out of memory (MemAvailable {(host.mem_available or 0) / 2**20:,.0f} MiB)",
        (f"MemAvailable {(host.mem_available or 0) / 2**20:,.0f} MiB on {host.hostname or 'the server host'}, "
         "read by the observer",),
        ("fewer connections on this host, a server that uses less memory per connection, or more memory",),
    )


def host_conntrack(host: HostRow) -> Finding:
    count, most = host.conntrack_count or 0, host.conntrack_max or 0
    return Finding(
        "conntrack", "server",
        f"the server host's connection-tracking table is full ({count:,} of nf_conntrack_max {most:,}): "
        "new connections are dropped",
        (f"net.netfilter.nf_conntrack_count {count:,} of nf_conntrack_max {most:,} on "
         f"{host.hostname or 'the server host'}",),
        (f"sysctl -w net.netfilter.nf_conntrack_max={max(most * 2, 262144)}, or exempt the test traffic from "
         "tracking (iptables -t raw ... -j NOTRACK)",),
    )


def host_tcp_memory(host: HostRow) -> Finding:
    pages, (low, pressure, high) = host.tcp_mem_pages or 0, host.tcp_mem
    page = host.page_size
    return Finding(
        "memory", "server",
        f"the server host's TCP buffer memory is under pressure ({pages * page / 2**20:,.0f} MiB, "
        f"tcp_mem pressure {pressure * page / 2**20:,.0f} MiB): the kernel shrinks buffers and drops packets",
        (f"sockstat TCP mem {pages:,} pages; net.ipv4.tcp_mem {low} {pressure} {high} on "
         f"{host.hostname or 'the server host'}",),
        (f"sysctl -w net.ipv4.tcp_mem='{low} {pressure * 2} {high * 2}' if the host has the memory; or find "
         "the reader that stopped draining its sockets (a stalled server)",),
    )


def server_gone(text: str) -> Finding:
    """The observed server exited (or was replaced) during the run."""
    return Finding("server_down", "server", f"the server process went away: {text}", (text,),
                   ("see the server's own log for why it ended (a crash, the OOM killer: dmesg), and restart it",))
