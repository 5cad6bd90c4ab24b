"""The walls a connection count meets, and how to tell which one it is.

`name_wall` takes a failure cause (or a ramp that fell behind) together with
what was seen around it (`Window`: counts, rates, kernel counter deltas, every
worker's CPU and loop lag) and the setup (`Context`), and returns a `Finding`:
which wall, on which side, a one-line headline, the evidence in words with the
numbers, and the fix. Pure; the incident detector and the run's verdict use it.

The walls are the original tool's findings (fds, ephemeral ports, the accept
queue's half-open ghosts, EADDRINUSE on listen, timeouts from a starved
server) and the one it never saw: connscale's own workers saturated, which
makes the RTT and the ramp rate connscale's rather than the server's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import attrs

from connscale.diagnose.fixes import fix_of
from connscale.host.observed import HostRow, ListenerRow, ProcessRow, TargetRow
from connscale.metrics.counters import SERVER_HEADER, TLS_CAUSES
from connscale.metrics.records import IncidentWorker, KernelCounters, Stats
from connscale.metrics.workers import WorkerRef

#: Every wall id, with a title. Bounded, so reports may key on them.
WALLS: Mapping[str, str] = {
    "none": "no wall: the target was held",
    "fd_process": "file descriptors per process (EMFILE)",
    "fd_system": "file descriptors of the whole system (ENFILE)",
    "ephemeral_ports": "ephemeral ports of a (source IP, server IP:port) tuple",
    "routes": "every route at its quota",
    "accept_queue": "the server's accept queue overflowing (half-open ghosts)",
    "listen_in_use": "the server port already in use (EADDRINUSE on listen)",
    "server_starved": "the server answering too late (starved of CPU, or stopped)",
    "server_down": "the server refusing or closing connections",
    "measuring_side": "connscale's own client workers saturated",
    "memory": "memory",
    "conntrack": "the connection-tracking table",
    "cpu": "CPU",
    "worker_lost": "a worker process died",
    "agent_lost": "an agent of the fleet was lost (its host, its network or its process)",
    "protocol": "a protocol mismatch",
    "tls": "TLS handshakes failing",
    "server_cap": "the server's own connection cap (maxclients, worker_connections, max_connections)",
    "server_refused": "the server refused, in its own words",
    "time_limit": "the run's time limit",
    "control_plane": "connscale's own hub or agent failed",
    "interrupted": "the run was interrupted",
    "unknown": "not recognised",
}

# -- when is a worker saturated ---------------------------------------------------------------
#: A worker busy this share of a core is saturated (one process uses one core).
CPU_SATURATED = 0.9
#: Mean loop lag over a second at which every read is noticeably late.
LAG_MEAN_SATURATED_MS = 50.0
#: A single stall this long in a second delays every pong waiting behind it.
LAG_MAX_SATURATED_MS = 500.0
#: A worker that has not answered its parent for this long is stopped or wedged.
SILENT_S = 2.0


@attrs.frozen
class WorkerLoad:
    side: str          # client | server
    agent: str         # the agent's name; "hub" for server workers
    index: int
    pid: int | None
    alive: bool = True
    open: int = 0
    target: int = 0
    budget: int = 0
    cpu: float | None = None
    lag_ms_max: float | None = None
    lag_ms_mean: float | None = None
    nofile: int | None = None
    silent_s: float | None = None
    #: For a silent worker: stopped by the kernel (True), running but late (False), unknown (None).
    stopped: bool | None = None

    @property
    def name(self) -> str:
        return f"{self.agent}-{self.side}-worker-{self.index + 1}"

    @property
    def saturated(self) -> bool:
        return self.alive and (
            (self.cpu or 0.0) >= CPU_SATURATED
            or (self.lag_ms_mean or 0.0) >= LAG_MEAN_SATURATED_MS
            or (self.lag_ms_max or 0.0) >= LAG_MAX_SATURATED_MS
            or self.starved
        )

    @property
    def late(self) -> bool:
        return self.alive and (self.silent_s or 0.0) >= SILENT_S

    @property
    def silent(self) -> bool:
        """Late and not known to be running: stopped or wedged."""
        return self.late and self.stopped is not False

    @property
    def starved(self) -> bool:
        """Late although the kernel has it running: it cannot get the CPU to reach its loop."""
        return self.late and self.stopped is False

    def describe(self) -> str:
        bits = [f"{self.name} (pid {self.pid})"]
        if self.silent:
            # Its load figures are from before it went quiet: leave them out.
            return f"{bits[0]}, has not answered for {self.silent_s:g} s, {self.open:,} open at its last report"
        if self.starved:
            return (f"{bits[0]}, running but has not answered for {self.silent_s:g} s (starved of CPU), "
                    f"{self.open:,} open at its last report")
        if self.cpu is not None:
            bits.append(f"cpu {self.cpu * 100:.0f} %")
        if self.lag_ms_mean is not None:
            bits.append(f"loop lag mean {self.lag_ms_mean:g} ms, max {self.lag_ms_max:g} ms")
        bits.append(f"{self.open:,} open")
        return ", ".join(bits)

    @classmethod
    def of(cls, ref: WorkerRef) -> "WorkerLoad":
        """A worker of a stats record (`Stats.worker_rows()`), as the walls judge it."""
        row = ref.row
        return cls(
            side=ref.side, agent=ref.agent, index=row.index, pid=row.pid, alive=row.alive, open=row.open,
            target=row.target, budget=row.budget, cpu=row.cpu, lag_ms_max=row.lag_ms_max,
            lag_ms_mean=row.lag_ms_mean, nofile=row.nofile, silent_s=row.silent_s, stopped=row.stopped,
        )

    def incident_row(self) -> IncidentWorker:
        """What an incident keeps of it."""
        return IncidentWorker(side=self.side, agent=self.agent, index=self.index, pid=self.pid, open=self.open,
                              cpu=self.cpu, lag_ms_max=self.lag_ms_max, lag_ms_mean=self.lag_ms_mean,
                              nofile=self.nofile, silent_s=self.silent_s, alive=self.alive)


def worker_loads(record: Stats) -> list[WorkerLoad]:
    """Every worker of a stats record the walls judge (`Stats.worker_rows()`: connected agents only)."""
    return [WorkerLoad.of(ref) for ref in record.worker_rows()]


@attrs.frozen
class AgentSetup:
    """What the controller knows of one agent (from its registration)."""

    source_ips: tuple[str, ...] = ()
    ephemeral: int | None = None          # ports per tuple it planned with
    port_range: tuple[int, int] | None = None
    cores: float | None = None
    host: str = ""


@attrs.frozen
class Context:
    """The setup the walls are judged against."""

    interval: float = 5.0
    timeout: float = 1.0
    backlog: int = 4096
    server_ports: int = 1
    per_route_max: int = 14_000
    somaxconn: int | None = None
    tcp_max_syn_backlog: int | None = None
    abort_on_overflow: int | None = None
    hub_cores: float | None = None
    hub_host: str = ""
    agents: Mapping[str, AgentSetup] = attrs.Factory(dict)
    #: False when the clients' target is not connscale's server (client.url).
    own_server: bool = True
    #: What the clients speak (net/profiles): line, raw, redis, http, websocket, mqtt, custom.
    protocol: str = "line"


def _kernel(value: KernelCounters | Mapping[str, int]) -> KernelCounters:
    """Counters given by name (tests, a hand-made window) as the record."""
    return value if isinstance(value, KernelCounters) else KernelCounters(**value)


@attrs.frozen
class Window:
    """What was seen over the last few seconds, as the walls need it."""

    elapsed_s: float = 0.0
    open: int = 0
    server_open: int = 0
    target: int = 0
    connecting: int = 0
    connect_rate: float = 0.0
    asked_rate: float = 0.0
    failures: Mapping[str, int] = attrs.Factory(dict)   # "phase:cause" and "server:phase:cause" -> n in the window
    kernel: KernelCounters = attrs.field(factory=KernelCounters, converter=_kernel)   # levels now
    kernel_delta: KernelCounters = attrs.field(factory=KernelCounters, converter=_kernel)  # growth in the window
    ghosts: int = 0
    ghosts_max: int = 0                                 # the most seen in the window
    workers: Sequence[WorkerLoad] = ()
    host_busy: float | None = None                      # the hub host's CPU share, when known
    #: What the server said, by cause (a sample each; "server" is its Server: header).
    said: Mapping[str, str] = attrs.Factory(dict)
    #: A server-side wall the observers' rows show this second (diagnose.observed), if any.
    server_wall: Finding | None = None
    #: An observer watches a live server process: its reading (a second behind a worker's
    #: own count, at times) names a server-side wall more exactly than the counts can.
    server_watched: bool = False

    def side(self, side: str) -> list[WorkerLoad]:
        return [w for w in self.workers if w.side == side]

    def saturated(self, side: str) -> list[WorkerLoad]:
        return [w for w in self.side(side) if w.saturated]

    def silent(self, side: str) -> list[WorkerLoad]:
        return [w for w in self.side(side) if w.silent]

    def top_failures(self, n: int = 3) -> str:
        items = sorted(self.failures.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k}={v:,}" for k, v in items)


@attrs.frozen
class Finding:
    wall: str
    side: str
    headline: str
    evidence: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()
    #: False when the evidence is thin (no side looks busy or stopped yet): the
    #: detector waits a second or two for better evidence before it settles.
    confident: bool = True


# -- naming ---------------------------------------------------------------------------------


def _cause(key: str) -> tuple[str, str, str]:
    """("client"|"server", phase, cause) of a failure key."""
    side = "client"
    if key.startswith("server:"):
        side, key = "server", key[len("server:"):]
    phase, _, cause = key.partition(":")
    return side, phase, cause


def _count(w: Window, key: str) -> str:
    return f"{w.failures.get(key, 0):,} {key} in the last seconds at {w.open:,} open"


def _kernel_line(w: Window) -> str | None:
    d = w.kernel_delta
    named = [(d.listen_overflows, "ListenOverflows"), (d.listen_drops, "ListenDrops"),
             (d.abort_on_overflow, "TCPAbortOnOverflow"), (d.syn_retrans, "SYN retransmits")]
    bits = [f"{label} +{n:,}" for n, label in named if n]
    return "kernel: " + ", ".join(bits) if bits else None


def _busiest(workers: Sequence[WorkerLoad], n: int = 3) -> list[str]:
    ranked = sorted(workers, key=lambda x: (-(x.silent_s or 0) if x.silent else 0, -(x.lag_ms_mean or 0),
                                            -(x.cpu or 0)))
    return [x.describe() for x in ranked[:n]]


def measuring_side(w: Window, ctx: Context, why: str = "") -> Finding:
    """The client workers are the bottleneck: what is measured is connscale's own delay."""
    sat = w.saturated("client") or w.silent("client")
    clients = w.side("client")
    cpu_total = sum(x.cpu or 0.0 for x in clients)
    evidence = [f"{len(sat)} of {len(clients)} client workers saturated (cpu >= {CPU_SATURATED * 100:.0f} % "
                f"of a core or loop lag mean >= {LAG_MEAN_SATURATED_MS:g} ms)"]
    evidence += _busiest(sat or clients)
    evidence.append(f"client workers together use {cpu_total:.2f} cores")
    # Late but hardly running: something else has the CPU (a cgroup quota, other
    # processes on these cores, the server on the same host).
    starved = [x for x in sat if x.starved
               or ((x.cpu or 0.0) < 0.5 and ((x.lag_ms_mean or 0.0) >= LAG_MEAN_SATURATED_MS
                                             or (x.lag_ms_max or 0.0) >= LAG_MAX_SATURATED_MS))]
    if starved:
        x = starved[0]
        late = (f"has not answered for {x.silent_s:g} s although the kernel has it running" if x.starved
                else f"runs up to {x.lag_ms_max:g} ms late (mean {x.lag_ms_mean:g} ms) while it uses only "
                     f"{(x.cpu or 0) * 100:.0f} % of a core")
        evidence.append(f"{x.name}'s loop {late}: it is starved of CPU (a cgroup CPU quota, or other processes on "
                        "its cores), not busy by itself")
    server_sat = w.saturated("server")
    if server_sat:
        evidence.append(f"{len(server_sat)} server workers are saturated too: they share this host's cores")
    if w.asked_rate and w.connect_rate < w.asked_rate * 0.5 and w.target > w.open:
        evidence.append(f"the ramp connects {w.connect_rate:,.0f}/s of the {w.asked_rate:,.0f}/s asked")
    if why:
        evidence.insert(0, why)
    fixes = []
    if starved:
        fixes.append("give the client workers their CPU back: lift the agent's cgroup CPU quota (cpu.max, "
                     "cpu.cfs_quota_us) or move other work off its cores")
    agents = {x.agent for x in clients}
    cores = [c for a in agents if a in ctx.agents and (c := ctx.agents[a].cores)]
    host_cores = sum(cores) if cores else None
    if not starved and host_cores is not None and cpu_total < host_cores * 0.7 and len(sat) < len(clients) / 2 + 1:
        fixes.append(f"more client workers (client.workers: {len(clients) * 2}), so the load spreads over "
                     f"the {host_cores:g} cores the agents have")
    fixes += fix_of("measuring_side").fix
    return Finding(
        "measuring_side", "client",
        "connscale's own client workers are saturated: the RTT and the ramp rate measured are connscale's, "
        "not the server's limit",
        tuple(evidence), tuple(fixes),
    )


def server_starved(w: Window, ctx: Context, key: str) -> Finding:
    silent = w.silent("server")
    sat = w.saturated("server")
    evidence = [_count(w, key)]
    confident = True
    if silent:
        headline = "the server stopped answering: its workers are stopped or wedged (timeouts)"
        evidence.append(f"{len(silent)} of {len(w.side('server'))} server workers have not answered the hub "
                        f"for {max(x.silent_s or 0 for x in silent):g} s (SIGSTOP, a debugger, swapping)")
        evidence += _busiest(silent)
        fixes = ["resume or restart the stopped server process (kill -CONT PID); a server that pauses under "
                 "load is the finding"]
    else:
        headline = "the server answers too late: its workers are starved of CPU (timeouts)"
        if sat:
            evidence.append(f"{len(sat)} of {len(w.side('server'))} server workers saturated")
            evidence += _busiest(sat)
        else:
            evidence.append("no server worker looks saturated from here: the delay is on the way "
                            "(network, a busy host) or in another server")
            confident = False
        fixes = [
            fix_of("no_answer_from_server").fix[0],
            f"fewer pings per second (client.interval above {ctx.interval:g} s) or a longer client.timeout "
            f"than {ctx.timeout:g} s, if the server is allowed to be that slow",
        ]
    if w.host_busy is not None and w.host_busy >= 0.9:
        evidence.append(f"the hub host's CPU is {w.host_busy * 100:.0f} % busy")
    return Finding("server_starved", "server", headline, tuple(evidence), tuple(fixes), confident)


def accept_queue(w: Window, ctx: Context, key: str | None) -> Finding:
    evidence = []
    if key:
        evidence.append(_count(w, key))
    ghosts = max(w.ghosts, w.ghosts_max)
    if ghosts:
        evidence.append(f"up to {ghosts:,} ghosts in the last seconds: connections the clients hold that no server "
                        "worker accepted (connect() and the first send succeed, no answer ever comes)")
    k = _kernel_line(w)
    if k:
        evidence.append(k)
    eff = ctx.backlog if ctx.somaxconn is None else min(ctx.backlog, ctx.somaxconn)
    evidence.append(f"accept queue per listener: server.backlog {ctx.backlog:,}"
                    + (f" capped by net.core.somaxconn {ctx.somaxconn:,}" if ctx.somaxconn is not None
                       and ctx.somaxconn < ctx.backlog else "")
                    + f" (effective {eff:,})")
    silent = w.silent("server") + w.saturated("server")
    if silent:
        evidence.append("server workers not accepting in time: " + "; ".join(_busiest(silent, 2)))
    fixes = [f"a larger accept queue: server.backlog: {max(eff * 4, 1024)} with "
             f"sysctl -w net.core.somaxconn={max(eff * 4, 1024)} "
             f"net.ipv4.tcp_max_syn_backlog={max(eff * 4, 1024)}"]
    if w.asked_rate:
        fixes.append(f"a slower ramp (scenario.rate below {w.asked_rate:,.0f}/s), so the server accepts as fast "
                     "as clients connect")
    if not ctx.abort_on_overflow:
        fixes.append("sysctl -w net.ipv4.tcp_abort_on_overflow=1 turns silent half-open connections into "
                     "resets the client sees at once (diagnosis, not a cure)")
    return Finding(
        "accept_queue", "server",
        "the server's accept queue overflowed: clients hold half-open connections the server never accepted",
        tuple(evidence), tuple(fixes),
    )


def _agent_setup(ctx: Context, w: Window) -> AgentSetup:
    agents = {x.agent for x in w.side("client")}
    for name in sorted(agents):
        if name in ctx.agents:
            return ctx.agents[name]
    return next(iter(ctx.agents.values()), AgentSetup())


def ephemeral_ports(w: Window, ctx: Context, key: str) -> Finding:
    setup = _agent_setup(ctx, w)
    ips = max(1, len(setup.source_ips))
    routes = ips * ctx.server_ports
    evidence = [_count(w, key),
                f"{routes} routes ({ips} source IP{'s' if ips > 1 else ''} x {ctx.server_ports} server ports)"]
    if setup.port_range:
        lo, hi = setup.port_range
        evidence.append(f"net.ipv4.ip_local_port_range {lo}-{hi} ({hi - lo + 1:,} ports per route)")
    per_route = w.open / routes if routes else 0
    planned = setup.ephemeral
    if planned and per_route < planned * 0.9:
        evidence.append(
            f"~{per_route:,.0f} connections per route when it failed, fewer than the {planned:,} ports the agent "
            "planned with: something else holds ports of these tuples (another agent or program on the same "
            "source IPs), or the range was narrowed after the agent started"
        )
    fixes = [
        f"more source IPs (client.source_ips, e.g. {', '.join(setup.source_ips[:1]) or '127.0.0.2'}-... "
        "on loopback; addresses of the client host elsewhere)",
        *fix_of("EADDRNOTAVAIL").fix[1:],
    ]
    return Finding("ephemeral_ports", "client",
                   "ephemeral ports ran out for a (source IP, server IP:port) tuple", tuple(evidence), tuple(fixes))


def fd_process(w: Window, ctx: Context, key: str, side: str) -> Finding:
    evidence = [_count(w, key)]
    workers = w.side(side)
    low = [x for x in workers if x.nofile is not None and x.nofile > 0 and x.open >= x.nofile - 110]
    for x in low[:3]:
        assert x.nofile is not None  # `low` holds only workers with a limit
        evidence.append(f"{x.name} (pid {x.pid}) holds {x.open:,} connections under RLIMIT_NOFILE {x.nofile:,}"
                        + (f" (its budget at start was {x.budget:,})" if x.budget and x.nofile < x.budget else ""))
    shrunk = [x for x in workers if x.nofile is not None and x.budget and 0 < x.nofile < x.budget]
    if shrunk:
        evidence.append(f"{len(shrunk)} worker(s) had their file limit lowered after they started (prlimit?)")
    role = "client" if side == "client" else "server"
    fixes = [
        f"more {role} workers ({role}.workers: auto sizes them by the fd budget; or a larger number)",
        fix_of("EMFILE").fix[1],
    ]
    if shrunk:
        fixes.insert(0, "raise the lowered limit again (prlimit --pid PID --nofile=HARD:HARD) or restart the worker")
    where = "a client worker" if side == "client" else "a server worker (accept)"
    return Finding("fd_process", side, f"{where} ran out of file descriptors (EMFILE)", tuple(evidence), tuple(fixes))


def _clients_explain_timeouts(w: Window, ctx: Context) -> bool:
    """Can the client workers' own delay account for pongs later than the timeout?

    A saturated client reads late by about its loop lag. When the server workers are
    saturated too, the timeouts are the clients' only if a client's loop runs late by
    a good part of the timeout (or it stopped answering); a client 60 ms late cannot
    make a pong a second late, a server worker starved of CPU can."""
    if not w.saturated("server"):
        return True
    late_ms = 500.0 * ctx.timeout
    return any(x.late or (x.lag_ms_max or 0.0) >= late_ms for x in w.saturated("client"))


#: TLS causes whose fix is the server's (its certificate, its TLS settings, its load); the
#: others are the client's settings (what it trusts, the name it checks, its certificate).
_SERVER_TLS = frozenset({"tls_cert_expired", "tls_cert_not_yet_valid", "tls_protocol_version",
                         "tls_handshake_failure", "tls_closed_in_handshake", "tls_handshake_timeout", "tls_error"})


def tls(w: Window, key: str) -> Finding:
    """TLS handshakes failing, by their cause (net/tls.py names it), with that cause's fix."""
    _, _, cause = _cause(key)
    row = fix_of(cause)
    return Finding("tls", "server" if cause in _SERVER_TLS else "client",
                   f"TLS handshakes fail: {row.means}", (_count(w, key),), row.fix)


def name_wall(key: str, w: Window, ctx: Context) -> Finding:
    """The wall behind failure `key` ("phase:cause", "server:phase:cause")."""
    side, phase, cause = _cause(key)
    if side == "client":
        found = server_words(key, phase, cause, w, ctx)
        if found is not None:
            return found
    # connscale's own late reads look like timeouts: rule them out first.
    if cause == "no_answer_from_server" and w.saturated("client") and not w.silent("server") \
            and _clients_explain_timeouts(w, ctx):
        return measuring_side(w, ctx, f"{_count(w, key)}: pongs read late by the client's own busy loop")
    # What the server's own host shows beats what the clients can tell (a reset, a timeout),
    # unless the failure names a client-side wall by itself.
    client_wall = side == "client" and (cause in ("EADDRNOTAVAIL", "EADDRINUSE", "route_quota", "EMFILE", "ENFILE"))
    if w.server_wall is not None and not client_wall:
        return w.server_wall
    if cause in ("EMFILE",):
        found = fd_process(w, ctx, key, side)
        # The server's accept() failing is counted at once; the observer's reading of that
        # process's limit may come a second later: wait for it (SETTLE) rather than open with less.
        return attrs.evolve(found, confident=False) if side == "server" and w.server_watched else found
    if cause == "ENFILE":
        return Finding(
            "fd_system", "host", "the system ran out of file descriptors (ENFILE)",
            (_count(w, key),), fix_of("ENFILE").fix,
        )
    if phase == "connect" and cause in ("EADDRNOTAVAIL", "EADDRINUSE") and side == "client":
        return ephemeral_ports(w, ctx, key)
    if cause == "route_quota":
        setup = _agent_setup(ctx, w)
        ips = max(1, len(setup.source_ips))
        return Finding(
            "routes", "client", "every route is at its quota: the configuration cannot place more connections",
            (_count(w, key), f"{ips} source IPs x {ctx.server_ports} server ports x {ctx.per_route_max:,} "
             "(client.per_route_max)"),
            fix_of("route_quota").fix,
        )
    d = w.kernel_delta
    overflow = bool(d.listen_overflows or d.listen_drops or d.abort_on_overflow)
    server_busy = bool(w.saturated("server") or w.silent("server"))
    # The kernel counting overflows is the accept queue's own evidence. Ghosts alone
    # also appear while a starved server is slow to accept: then the server is the wall.
    if (phase == "first_ping" and cause in ("ECONNRESET", "no_answer_from_server", "closed_by_peer")
            and (overflow or ((w.ghosts or w.ghosts_max) and not server_busy))):
        return accept_queue(w, ctx, key)
    if phase == "connect" and cause == "ETIMEDOUT":
        if overflow or d.syn_retrans:
            return accept_queue(w, ctx, key)
        return Finding("server_down", "server", "SYNs go unanswered: the server host drops them or is down",
                       (_count(w, key),), fix_of("ETIMEDOUT").fix)
    if cause == "no_answer_from_server":
        return server_starved(w, ctx, key)
    if cause == "ECONNREFUSED":
        return Finding("server_down", "server", "nothing listens on the server port (connection refused)",
                       (_count(w, key),), fix_of("ECONNREFUSED").fix)
    if cause in TLS_CAUSES:
        return tls(w, key)
    protocol = [k for k in w.failures if k.endswith(":protocol_error")]
    if cause == "protocol_error" and ctx.protocol not in ("line", "raw"):
        return wrong_server(w, ctx, key)
    if cause == "protocol_error" or (cause in ("closed_by_peer", "ECONNRESET") and protocol):
        # The server closes a connection that breaks the protocol: the client sees it closed.
        return Finding("protocol", "server" if any(k.startswith("server:") for k in protocol) else side,
                       "the two sides speak different protocols (protocol errors close the connections)",
                       tuple(_count(w, k) for k in sorted({key, *protocol})),
                       fix_of("protocol_error").fix)
    if cause in ("closed_by_peer", "ECONNRESET"):
        lost = [x for x in w.side("server") if not x.alive]
        evidence = [_count(w, key)]
        if lost:
            evidence.append(f"{len(lost)} server workers are down")
        elif w.silent("server"):
            return server_starved(w, ctx, key)
        # Why the server closed is in its own report, which may reach the hub a poll after
        # the client's (a protocol error it counted, a worker it lost): wait for it before
        # settling on "down", so the verdict does not depend on which side reported first.
        return Finding("server_down", "server", "the server closed or reset established connections",
                       tuple(evidence), fix_of("closed_by_peer").fix,
                       confident=bool(lost) or side == "server")
    if cause == "worker_lost":
        mem = w.kernel.mem_available_bytes
        evidence = [_count(w, key)]
        if mem is not None and mem < 512 * 2**20:
            return Finding("memory", "host", "the host ran out of memory: a worker died with its connections",
                           (*evidence, f"MemAvailable {mem / 2**20:.0f} MiB"),
                           ("fewer connections per host, more hosts, or more memory",))
        return Finding("worker_lost", side, "a worker process died and took its connections with it",
                       tuple(evidence), fix_of("worker_lost").fix)
    return Finding("unknown", side, f"failures with cause {cause}", (_count(w, key),),
                   fix_of("unknown").fix, confident=False)


def name_stall(w: Window, ctx: Context) -> Finding:
    """Why a ramp falls behind what was asked, when no failure says so by itself."""
    if w.saturated("client") or w.silent("client"):
        return measuring_side(w, ctx, f"the ramp connects {w.connect_rate:,.0f}/s of the {w.asked_rate:,.0f}/s asked")
    if w.failures:
        top = max(w.failures.items(), key=lambda kv: kv[1])[0]
        return name_wall(top, w, ctx)
    if w.silent("server") or w.saturated("server"):
        return server_starved(w, ctx, "connect:(none yet)")
    d = w.kernel_delta
    overflow = bool(d.listen_overflows or d.listen_drops or d.syn_retrans)
    if overflow or w.ghosts or w.ghosts_max:
        return accept_queue(w, ctx, None)
    clients = w.side("client")
    down = [x for x in clients if not x.alive]
    if down:
        return Finding("worker_lost", "client", "client workers are down, so their share is not being opened",
                       (f"{len(down)} of {len(clients)} client workers are down",),
                       fix_of("worker_lost").fix)
    return Finding(
        "unknown", "client",
        f"the ramp falls behind ({w.connect_rate:,.0f}/s of {w.asked_rate:,.0f}/s asked) without a failure "
        "or a busy worker on either side",
        (f"{w.open:,} open of {w.target:,}, {w.connecting:,} connecting",),
        fix_of("unknown").fix,
        confident=False,
    )


def listen_in_use(text: str) -> Finding | None:
    """A hub that could not listen: the original's first finding."""
    if "Address already in use" not in text and "EADDRINUSE" not in text:
        return None
    m = re.search(r":(\d{1,5})\b", text)
    port = m.group(1) if m else "PORT"
    return Finding(
        "listen_in_use", "server", "the server could not listen: the port is already in use (EADDRINUSE)",
        (text.strip().splitlines()[-1][:300],),
        (f"another process holds the port: find it with ss -ltnp 'sport = :{port}', stop it or change "
         "server.ports (connscale sets SO_REUSEADDR, so connections of an earlier run in TIME_WAIT do not "
         "block it)",),
    )


# -- the server's own words (client.protocol other than line/raw; net/profiles) -------------------------

def _quote(w: Window, cause: str) -> str:
    words = w.said.get(cause)
    return f'"{words}"' if words else ""


def _server_is(w: Window, name: str) -> bool:
    return name in w.said.get(SERVER_HEADER, "").lower()


def _cap(key: str, w: Window, headline: str, words: str, fixes: Sequence[str]) -> Finding:
    evidence = [_count(w, key)]
    if words:
        evidence.append(f"the server said: {words}")
    server = w.said.get(SERVER_HEADER)
    if server:
        evidence.append(f"it identified itself as {server}")
    return Finding("server_cap", "server", headline + (f": {words}" if words else ""), tuple(evidence), tuple(fixes))


def server_words(key: str, phase: str, cause: str, w: Window, ctx: Context) -> Finding | None:
    """A failure a profile named from what the server said or did (None: not one of those).

    Each server's cap is named with its fix: Redis's maxclients, nginx's
    worker_connections, a broker's CONNACK refusal or its connection cap, a
    WebSocket server's 503 at the upgrade; the server's words are quoted."""
    quote = _quote(w, cause)
    if cause == "redis_maxclients":
        return _cap(key, w, "Redis refused new connections at its maxclients", quote, (
            "raise Redis's maxclients: `maxclients 20000` in redis.conf, or `redis-cli CONFIG SET maxclients 20000` "
            "on the running server",
            "Redis lowers maxclients to its open-file limit minus 32 at start: raise the limit it starts with "
            "(ulimit -n 65536 before redis-server, LimitNOFILE=65536 in its systemd unit) and restart it",
        ))
    if cause.startswith("connack_"):
        code = cause.rsplit("_", 1)[-1]
        connack_fixes = {
            "3": ("the broker is at its connection cap or refuses service: raise it (mosquitto: max_connections "
                  "in mosquitto.conf, -1 for no cap; and its open-file limit, LimitNOFILE=), or it is shutting down",),
            "4": ("give the broker's user and password: client.user and client.password, or mqtt://USER:PASS@HOST",),
            "5": ("the broker's ACL or authentication does not let this client in: client.user/client.password, "
                  "or the broker's allow_anonymous / acl_file",),
            "2": ("the broker rejects the client id: client.mqtt.client_prefix (ids are the prefix, the worker's "
                  "pid and a number; keep the prefix short for brokers that allow 23 characters)",),
            "1": ("the broker does not speak MQTT 3.1.1 (protocol level 4): check its version or listener",),
        }.get(code, ("see the broker's log for the refusal",))
        if code == "3":
            return _cap(key, w, "the MQTT broker refused new connections (CONNACK 3, server unavailable)", quote,
                        connack_fixes)
        return Finding("server_refused", "server", f"the MQTT broker refused the CONNECT: {quote or cause}",
                       (_count(w, key),) + ((f"the server said: {quote}",) if quote else ()), connack_fixes)
    if cause == "http_503" and phase == "connect" and ctx.protocol == "websocket":
        return _cap(key, w, "the WebSocket server refused the upgrade with 503 (at its own connection limit)",
                    quote, (
                        "raise the WebSocket server's own connection limit (autobahn: maxConnections; a proxy in "
                        "front: its connection cap, e.g. nginx worker_connections) and its open-file limit",
                        "or spread the clients over more server processes (a port range in client.url)",
                    ))
    if cause in ("closed_by_peer", "ECONNRESET") and ctx.protocol == "http" and _server_is(w, "nginx"):
        # At its worker_connections nginx closes idle keep-alive connections to take new
        # ones ("worker_connections are not enough, reusing connections" in its error log),
        # or closes the new ones: either way the clients see their connections closed.
        return _cap(key, w, "nginx closes connections: its worker_connections are used up", "", (
            "raise worker_connections (events { worker_connections 65536; } in nginx.conf): each worker "
            "holds at most that many connections, its listeners included",
            "and worker_rlimit_nofile (at least worker_connections, e.g. worker_rlimit_nofile 131072;) so "
            "the workers may open that many files; more worker_processes multiply both",
        ))
    if phase == "connect" and cause in ("closed_by_peer", "ECONNRESET"):
        if w.open == 0 and not any(k.split(":")[0] in ("first_ping", "steady") for k in w.failures):
            # Not one session ever opened, and not a word: a TLS server (OpenSSL closes on
            # a plain-text first record without an alert) or a server of another protocol.
            return wrong_server(w, ctx, key, silent=True)
        if ctx.protocol == "mqtt":
            return _cap(key, w, "the MQTT broker closes new connections before its CONNACK (at its connection "
                        "cap or its open-file limit)", "", (
                            "raise the broker's cap (mosquitto: max_connections in mosquitto.conf, -1 for none; "
                            "its log says \"max_connections exceeded\")",
                            "and its open-file limit (ulimit -n, LimitNOFILE= in its systemd unit)",
                        ))
        if ctx.protocol in ("redis", "websocket", "http"):
            return _cap(key, w, "the server closes new connections before the session opens (a connection "
                        "cap or its open-file limit)", "", (
                            "see the server's log for why it closed them; raise its connection cap and its "
                            "open-file limit (ulimit -n, LimitNOFILE=)",
                        ))
        return None
    if cause == "handshake_timeout":
        evidence = [_count(w, key)]
        fixes = ["a slower ramp (scenario.rate), a longer client.handshake_timeout, or more server capacity "
                 "(more worker processes or cores for it)"]
        kernel = _kernel_line(w)
        if kernel:
            # Connections the kernel completed but the server never accepted wait unanswered.
            evidence.append(f"{kernel}: the server's accept queue overflowed")
            fixes.insert(0, "a larger accept queue on the server: its listen backlog (nginx: listen ... "
                            "backlog=65535; Redis: tcp-backlog) with sysctl -w net.core.somaxconn=65535")
        return Finding("server_starved", "server",
                       "the server does not complete new sessions in time (handshake_timeout)",
                       tuple(evidence), tuple(fixes), confident=True)
    if cause.startswith(("redis_", "http_", "ws_")) or cause in ("expect_mismatch",):
        fix = {
            "redis_noauth": "give Redis's password: redis://:PASSWORD@HOST (or USER:PASSWORD@ for an ACL user), "
                            "or client.password",
            "redis_loading": "Redis is loading its dataset: start the run once it is up",
            "http_connection_close": "the server will not keep connections alive: enable keep-alive "
                                     "(nginx: keepalive_timeout > client.interval, keepalive_requests high "
                                     "enough for a run's pings)",
            "ws_bad_accept": "the server's handshake answer is not RFC 6455's (a proxy in between, or not a "
                             "WebSocket endpoint): check client.url's path",
            "expect_mismatch": "client.custom.expect or expect_regex does not match what the server answers",
        }.get(cause, "see the server's log: it said why")
        if cause.startswith("http_") and cause[5:].isdigit() and int(cause[5:]) >= 500:
            fix = "the server fails the request: see its log (an upstream down, a limit reached)"
        elif cause.startswith("http_4"):
            fix = "check client.url's path, client.http.method and headers: the server refuses the request"
        elif cause.startswith("ws_close_"):
            fix = "the server closed the WebSocket with this code: see its log (1001: going away, 1008: policy)"
        return Finding("server_refused", "server", f"the server refused: {quote or cause}",
                       (_count(w, key),) + ((f"the server said: {quote}",) if quote else ()), (fix,))
    return None


def wrong_server(w: Window, ctx: Context, key: str, silent: bool = False) -> Finding:
    """Replies that are not the profile's protocol: another server, or TLS spoken to in plain text.

    `silent`: the server said nothing at all, it closed every connection before the session opened."""
    evidence = [_count(w, key)]
    fixes = []
    tls_fix = "use the TLS scheme (rediss://, https://, wss://, mqtts://, tls://) or client.tls.enabled"
    if silent:
        return Finding("protocol", "server",
                       f"the server closes every new connection before a {ctx.protocol} session opens, without a "
                       "word: it may expect TLS, or speak another protocol",
                       (*evidence, "no connection ever opened a session; the server sent nothing before closing"),
                       (tls_fix + " if it speaks TLS",
                        "check client.url's scheme and port, and the server's log for why it closes them"))
    if w.said.get("unexpected_reply"):
        evidence.append(f'the server answered: "{w.said["unexpected_reply"]}"')
    if w.said.get("too_large"):
        evidence.append(f"a reply was too large: {w.said['too_large']}")
    if w.said.get("tls_reply"):
        headline = f"the server speaks TLS, the clients plain {ctx.protocol}"
        fixes.append(tls_fix)
    else:
        headline = f"the server does not speak {ctx.protocol}: its replies are another protocol (protocol errors)"
        fixes.append("check client.url's scheme and port: another server answers there")
    fixes.append("client.max_reply bounds one reply; a server that sends more is cut off as too_large")
    return Finding("protocol", "server", headline, tuple(evidence), tuple(fixes))
# -- the server's side, as an observer sees it (connscale observe) ----------------------------
# Each reads the observer's rows (host.observed) of the second the wall was met; the words name
# the process, its pid and the number the kernel holds it to, so the fix can be exact.

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
