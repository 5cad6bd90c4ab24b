"""The capacity budget: how many connections a configuration can reach on a host,
which limit binds first, and the exact fix for each.

Pure: it reasons about a `HostLimits` reading and a `Demand` (what the
configuration asks), so it runs the same in `connscale check`, before
`connscale run`, on every agent (which reports its reading to the hub) and in
tests with invented hosts. Every limit becomes a `Limit`: how many connections
it lets through (`capacity`, None when it bounds no count, only a risk), the
evidence in words, and the change that lifts it.

What is asked and what is answered (`Demand`, `Limit`, `Budget`) are diagnose/capacity.py;
what one connection costs is diagnose/costs.py; a fleet's check is diagnose/fleetcheck.py.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence

from connscale.diagnose.capacity import Budget, Demand, Limit
from connscale.diagnose.costs import US_IDLE_PER_CONN, WORKER_BYTES
from connscale.host.inventory import HostLimits
from connscale.host.limits import FD_RESERVE, MAX_WORKERS, connection_budget, per_worker, tuple_cap

#: The share of the cores keepalive traffic may plan on. The rest keeps the event
#: loops prompt: a loop that is busy all the time delays every pong it reads, so
#: the RTT measured would be connscale's own queueing rather than the server's.
CPU_SHARE = 0.7
#: The share of usable memory connections may plan on (the page cache, the hub,
#: the agent and the kernel's own growth need the rest).
MEMORY_SHARE = 0.9
#: Seconds a run spends before its first connect (hub, agent, first workers).
RUN_STARTUP_S = 10.0


# -- the limits, one function each ----------------------------------------------------------


def _n(x: float) -> str:
    return f"{int(x):,}"


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f} GiB"


def _free_ports(h: HostLimits) -> int | None:
    """Ephemeral ports usable per tuple: the range minus ip_local_reserved_ports inside it."""
    if h.port_range is None:
        return None
    lo, hi = h.port_range
    reserved = 0
    for part in h.reserved_ports.replace(" ", "").split(","):
        if not part:
            continue
        a, _, b = part.partition("-")
        if a.isdigit() and (not b or b.isdigit()):
            x, y = int(a), int(b or a)
            reserved += max(0, min(y, hi) - max(x, lo) + 1)
    return max(0, hi - lo + 1 - reserved)


def more_sources(sources: Sequence[str], count: int, key: str = "client.source_ips",
                 loopback: bool = True) -> str:
    """A concrete source_ips value (`key`: client.source_ips, or clients.NAME.source_ips) with
    `count` addresses, extending what is configured. Loopback addresses are offered only for a
    server on loopback: a server on another address is reached from the host's own addresses."""
    if not sources and not loopback:
        return f"{key}: {count} addresses of that host"
    try:
        first = ipaddress.ip_address(sources[0]) if sources else ipaddress.ip_address("127.0.0.2")
        last = first + (count - 1)
    except (ValueError, ipaddress.AddressValueError):
        return f"{key}: {count} source IPs"
    if sources and not first.is_loopback:
        return f"{key}: {count} addresses of that host (e.g. {first}-{last})"
    return f"{key}: {first}-{last}"


def routes_limits(h: HostLimits, d: Demand) -> list[Limit]:
    ips = max(1, len(d.source_ips))
    shape = f"{ips} source IP{'s' if ips > 1 else ''} x {d.server_ports} server port{'s' if d.server_ports > 1 else ''}"
    ephemeral = _free_ports(h)
    cap = tuple_cap(d.per_route_max, ephemeral if ephemeral is not None else d.per_route_max)
    need_routes = math.ceil(d.target / cap)
    need_ips = math.ceil(need_routes / d.server_ports)
    fix = (
        f"{more_sources(d.source_ips, need_ips, d.source_key, d.server_loopback)} ({need_ips} IPs x {d.server_ports} ports x {cap:,} = "
        f"{need_ips * d.server_ports * cap:,}), or more server ports (server.ports)"
    )
    out = [
        Limit(
            "routes", "client", d.routes * d.per_route_max,
            f"{shape} x {d.per_route_max:,} per route (client.per_route_max)",
            fix,
        )
    ]
    if ephemeral is not None:
        lo, hi = h.port_range or (0, 0)
        wide = 64_511  # 1024-65535
        ephemeral_fix = (
            f"{more_sources(d.source_ips, need_ips, d.source_key, d.server_loopback)} ({need_ips} IPs), or sysctl -w "
            f"net.ipv4.ip_local_port_range='1024 65535' ({wide:,} ports per route)"
        )
        reserved = f", minus {hi - lo + 1 - ephemeral:,} reserved" if ephemeral != hi - lo + 1 else ""
        out.append(
            Limit(
                "ephemeral_ports", "client", d.routes * ephemeral,
                f"{shape} x {ephemeral:,} ports (net.ipv4.ip_local_port_range {lo}-{hi}{reserved})",
                ephemeral_fix,
            )
        )
    return out


def _workers_for(n: int, budget: int, configured: int | str) -> int:
    if configured != "auto":
        return max(1, int(configured))
    return max(1, math.ceil(n / per_worker(budget)))


def fd_process_limits(h: HostLimits, d: Demand) -> list[Limit]:
    ceiling = h.nofile_ceiling
    out = []
    for side in d.sides:
        if ceiling is None:
            out.append(Limit("fd_process", side, None, "RLIMIT_NOFILE unreadable"))
            continue
        budget = connection_budget(ceiling)
        configured = d.client_workers if side == "client" else d.server_workers
        if configured == 0:
            workers, how = 1, "one process (workers: 0)"
        elif configured != "auto":
            workers, how = int(configured), f"{side}.workers: {configured}"
        else:
            workers, how = MAX_WORKERS, f"at most {MAX_WORKERS} workers"
        capacity = workers * per_worker(budget)
        needed = math.ceil(d.target / per_worker(budget))
        detail = (
            f"{how} x {per_worker(budget):,} connections each (RLIMIT_NOFILE hard {ceiling:,} - {FD_RESERVE} "
            f"reserved, filled to 95 %); {d.target:,} need {needed:,} workers"
        )
        if configured == "auto" and needed <= MAX_WORKERS:
            fix = None
        elif needed <= MAX_WORKERS:
            fix = f"{side}.workers: {needed} (or auto)"
        else:
            want = min(h.nr_open or 1_048_576, 1_048_576)
            fix = (
                f"raise the hard limit before starting: ulimit -Hn {want} (systemd: LimitNOFILE={want}; "
                f"/etc/security/limits.conf), at most fs.nr_open={h.nr_open or '?'}"
            )
        out.append(Limit("fd_process", side, capacity, detail, fix))
    return out


def fd_system_limit(h: HostLimits, d: Demand) -> Limit:
    if h.file_max is None:
        return Limit("fd_system", "host", None, "fs.file-max unreadable")
    used = h.files_allocated or 0
    per_conn = len(d.sides)
    free = max(0, h.file_max - used)
    need = d.target * per_conn + used
    return Limit(
        "fd_system", "host", free // per_conn,
        f"fs.file-max {h.file_max:,}, {used:,} open now, {per_conn} fd per connection on this host",
        f"sysctl -w fs.file-max={max(need * 2, h.file_max):,}".replace(",", ""),
    )


def bytes_per_connection(d: Demand) -> float:
    """Memory one more connection costs this host, its workers' share included."""
    kernel = d.costs.kernel_pair * (1.0 if d.roles == "both" else 0.5)
    user = sum(d.user_bytes(s) for s in d.sides)
    # Every per_worker(budget) connections bring one more worker process per side.
    return kernel + user


def memory_limit(h: HostLimits, d: Demand) -> Limit:
    usable = h.usable_memory
    if usable is None:
        return Limit("memory", "host", None, "/proc/meminfo unreadable")
    budget = connection_budget(h.nofile_ceiling or 20_000)
    per_conn = bytes_per_connection(d) + len(d.sides) * WORKER_BYTES / per_worker(budget)
    capacity = int(usable * MEMORY_SHARE / per_conn)
    need = d.target * per_conn / MEMORY_SHARE
    where = "the cgroup's memory limit" if h.usable_memory != h.mem_available else "MemAvailable"
    detail = (
        f"{_gib(usable)} free ({where}); a connection costs ~{per_conn / 1024:.1f} KB here "
        f"(kernel {d.costs.kernel_pair * (1.0 if d.roles == 'both' else 0.5) / 1024:.1f} KB, "
        f"user {sum(d.user_bytes(s) for s in d.sides) / 1024:.1f} KB{' with TLS' if d.tls else ''}, "
        "worker processes' share "
        f"{len(d.sides) * WORKER_BYTES / per_worker(budget) / 1024:.1f} KB; per connection as measured by "
        f"{d.costs.source})"
    )
    fix = (
        f"{_gib(need)} needed for {d.target:,}: free memory, or move the clients to other hosts (clients: in the config)"
        if d.roles == "both" else f"{_gib(need)} needed for {d.target:,}: a host with more memory, or more hosts"
    )
    return Limit("memory", "host", capacity, detail, fix)


def tcp_mem_limit(h: HostLimits, d: Demand) -> Limit:
    """Not a count: idle connections hold ~no buffer memory. But if every connection
    had one message queued at once (a stalled server), each holds a page."""
    if h.tcp_mem is None:
        return Limit("tcp_mem", "host", None, "net.ipv4.tcp_mem unreadable")
    _, pressure, high = h.tcp_mem
    page = h.page_size
    sockets = d.target * len(d.sides)
    stalled = sockets * page
    detail = f"tcp_mem pressure {_gib(pressure * page)}, max {_gib(high * page)}"
    if h.mem_total:
        detail += f" ({100 * high * page / h.mem_total:.0f} % of RAM)"
    if h.mem_total and high * page > h.mem_total:
        return Limit("tcp_mem", "host", None, detail + ": its max exceeds RAM, so the kernel may OOM before it",
                     f"sysctl -w net.ipv4.tcp_mem='{h.mem_total // page // 16} {h.mem_total // page // 12} "
                     f"{h.mem_total // page // 8}'", warn=True)
    if stalled > pressure * page:
        return Limit(
            "tcp_mem", "host", None,
            detail + f"; idle connections hold ~0, but if all {sockets:,} sockets had a message queued at once "
            f"(a stalled server) they would hold ~{_gib(stalled)} and the kernel would drop packets "
            "('TCP: out of memory')",
            f"sysctl -w net.ipv4.tcp_mem='{pressure} {max(pressure, stalled // page)} "
            f"{max(high, min(stalled // page * 2, (h.mem_total or 0) // page // 2))}'",
            warn=True,
        )
    return Limit("tcp_mem", "host", None, detail + ": room for a page queued on every socket")


def conntrack_limit(h: HostLimits, d: Demand) -> Limit:
    if h.conntrack_max is None:
        return Limit("conntrack", "host", None, "nf_conntrack not loaded: connections are not tracked")
    count = h.conntrack_count or 0
    if count == 0:
        return Limit(
            "conntrack", "host", None,
            f"nf_conntrack loaded but tracking nothing (count 0); if a firewall rule starts tracking, "
            f"net.netfilter.nf_conntrack_max={h.conntrack_max:,} becomes a limit",
        )
    need = d.target + count
    return Limit(
        "conntrack", "host", max(0, h.conntrack_max - count),
        f"net.netfilter.nf_conntrack_max {h.conntrack_max:,}, {count:,} tracked now (one entry per connection)",
        f"sysctl -w net.netfilter.nf_conntrack_max={int(need * 1.2)}",
    )


def cpu_need(n: int, d: Demand, interval: float | None = None) -> float:
    """Cores holding `n` connections, each pinging every `interval`, needs on this host (estimate)."""
    interval = d.interval if interval is None else interval
    return sum(n * (d.us_per_roundtrip(s) / interval + US_IDLE_PER_CONN[s]) * 1e-6 for s in d.sides)


def cpu_limit(h: HostLimits, d: Demand) -> Limit:
    cores = h.effective_cores
    allowed = cores * CPU_SHARE
    per_conn = cpu_need(1, d)
    capacity = int(allowed / per_conn)
    need = cpu_need(d.target, d)
    pings = d.target / d.interval
    idle = sum(d.target * US_IDLE_PER_CONN[s] * 1e-6 for s in d.sides)
    quota = f" (cgroup quota {h.cpu_quota:g})" if h.cpu_quota else ""
    detail = (
        f"{d.target:,} connections at client.interval {d.interval:g} s = {_n(pings)} pings/s "
        f"(~{sum(d.us_per_roundtrip(s) for s in d.sides):.1f} us each) plus ~{idle:.2f} cores to hold them "
        f"({'both sides' if d.roles == 'both' else d.roles}): ~{need:.1f} cores of the {allowed:.1f} planned "
        f"({int(CPU_SHARE * 100)} % of {cores:g}{quota}, so that connscale's own loops stay prompt; estimate)"
    )
    fix = None
    if need > allowed:
        if idle < allowed * 0.9:
            # The interval at which pings fit into what holding leaves.
            ping_us = sum(d.us_per_roundtrip(s) for s in d.sides) * 1e-6 * d.target
            longer = math.ceil(ping_us / (allowed - idle))
            fix = (
                f"client.interval: {longer} ({_n(d.target / longer)} pings/s), or put the clients on other hosts "
                "(clients: in the config)"
            )
        else:
            fix = (
                f"holding {d.target:,} connections alone needs ~{idle:.1f} cores here, whatever the interval: "
                "put the clients on other hosts (clients: in the config) or use a host with more cores"
            )
    return Limit("cpu", "host", capacity, detail, fix)


def accept_queue_limit(h: HostLimits, d: Demand) -> Limit | None:
    if "server" not in d.sides:
        return None
    somax = h.somaxconn
    fixes = []
    effective = d.backlog if somax is None else min(d.backlog, somax)
    detail = f"server.backlog {d.backlog:,}, net.core.somaxconn {somax if somax is not None else '?'}"
    if somax is not None and somax < d.backlog:
        fixes.append(f"sysctl -w net.core.somaxconn={d.backlog}")
        detail += f": listen() is silently capped to {somax:,}"
    syn = h.tcp_max_syn_backlog
    if syn is not None:
        detail += f", net.ipv4.tcp_max_syn_backlog {syn:,}"
        if syn < effective and not h.syncookies:
            fixes.append(f"sysctl -w net.ipv4.tcp_max_syn_backlog={effective}")
    # The pool sends a ramp's connects in 10 ms batches; one server worker's queue
    # on one port must absorb a batch even when that worker is busy for a moment.
    burst = d.rate * 0.02
    if effective < burst:
        fixes.append(f"server.backlog: {int(burst * 4)} (a ramp at {d.rate:g}/s sends batches of {int(burst)})")
    if fixes:
        return Limit("accept_queue", "server", None, detail, "; ".join(fixes), warn=True)
    return Limit("accept_queue", "server", None, detail + ": room for the ramp's bursts")


def ramp_limit(h: HostLimits, d: Demand) -> list[Limit]:
    if d.time_limit is None:
        return []
    out = []
    ramp_s = max(0.0, d.time_limit - d.holds - RUN_STARTUP_S)
    capacity = int(d.rate * ramp_s)
    need_s = d.target / d.rate + d.holds + RUN_STARTUP_S
    out.append(Limit(
        "time_limit", "run", capacity,
        f"scenario.rate {d.rate:g}/s for the {ramp_s:.0f} s that scenario.time_limit {d.time_limit:g} s leaves "
        f"after {d.holds:g} s of holds and ~{RUN_STARTUP_S:g} s of start-up",
        f"scenario.time_limit: {math.ceil(need_s * 1.2)}",
    ))
    connect_cores = sum(d.rate * d.us_per_connect(s) * 1e-6 for s in d.sides)
    hold_cores = cpu_need(d.target, d)
    allowed = h.effective_cores * CPU_SHARE
    # Only when the hold itself fits: otherwise the cpu limit already says it all.
    if hold_cores <= allowed < connect_cores + hold_cores:
        out.append(Limit(
            "ramp_rate", "run", None,
            f"connecting at {d.rate:g}/s costs ~{connect_cores:.2f} cores on top of the pings of the "
            f"connections already open: the ramp will fall behind near the target",
            f"scenario.rate: {max(100, int(d.rate * (allowed - hold_cores) / connect_cores))}",
            warn=True,
        ))
    return out


def budget(h: HostLimits, d: Demand) -> Budget:
    """Every limit of host `h` against demand `d`."""
    limits: list[Limit] = []
    if "client" in d.sides:
        limits += routes_limits(h, d)
    limits += fd_process_limits(h, d)
    limits += [fd_system_limit(h, d), memory_limit(h, d), cpu_limit(h, d), conntrack_limit(h, d), tcp_mem_limit(h, d)]
    aq = accept_queue_limit(h, d)
    if aq is not None:
        limits.append(aq)
    limits += ramp_limit(h, d)
    return Budget(d.target, tuple(limits), host=h.hostname, roles=d.roles)


# -- words ----------------------------------------------------------------------------------


def render(b: Budget, h: HostLimits | None = None) -> list[str]:
    """What `connscale check` prints."""
    lines = []
    if h is not None:
        mem = f"{_gib(h.mem_total)} RAM" if h.mem_total else "RAM ?"
        lines.append(
            f"host {h.hostname}: {h.effective_cores:g} cores, {mem}, kernel {h.kernel}; "
            f"{'server and client' if b.roles == 'both' else b.roles} here"
        )
    lines.append(f"target {b.target:,} connections")
    width = max(len(lim.key) for lim in b.limits) + 1
    first = b.binding
    for lim in sorted(b.limits, key=lambda lim: (lim.capacity is None, lim.capacity or 0)):
        cap = f"{lim.capacity:>12,}" if lim.capacity is not None else f"{'-':>12}"
        mark = "  <- binds first" if lim is first else ("  <- short" if lim in b.short else "")
        lines.append(f"  {lim.key:<{width}} {lim.side:<6} {cap}  {lim.detail}{mark}")
    if b.ok:
        lines.append(f"verdict: this configuration can reach {b.target:,} connections here.")
    else:
        assert first is not None
        lines.append(
            f"verdict: this configuration reaches {b.reachable:,} of {b.target:,}: {first.key} ({first.side}) "
            "binds first."
        )
        lines.append("fix, in the order the limits bind:")
        for i, lim in enumerate(b.short, 1):
            lines.append(f"  {i}. {lim.key}: {lim.fix or 'see above'}")
    for lim in b.warnings:
        lines.append(f"warning: {lim.key}: {lim.detail}" + (f"; fix: {lim.fix}" if lim.fix else ""))
    return lines
