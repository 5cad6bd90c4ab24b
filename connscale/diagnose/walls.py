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

What a wall is judged on is diagnose/window.py; the walls a protocol profile
names from the server's own words are diagnose/server_words.py; the server's
side as an observer reads it is diagnose/observer_walls.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import attrs

from connscale.diagnose.fixes import fix_of
from connscale.diagnose.server_words import server_words, wrong_server
from connscale.diagnose.window import (
    CPU_SATURATED,
    LAG_MAX_SATURATED_MS,
    LAG_MEAN_SATURATED_MS,
    PEER_CLOSED,
    AgentSetup,
    Context,
    Failure,
    Finding,
    Window,
    busiest,
    count_line,
    kernel_line,
)
from connscale.metrics.counters import TLS_CAUSES

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

def measuring_side(w: Window, ctx: Context, why: str = "") -> Finding:
    """The client workers are the bottleneck: what is measured is connscale's own delay."""
    sat = w.saturated("client") or w.silent("client")
    clients = w.side("client")
    cpu_total = sum(x.cpu or 0.0 for x in clients)
    evidence = [f"{len(sat)} of {len(clients)} client workers saturated (cpu >= {CPU_SATURATED * 100:.0f} % "
                f"of a core or loop lag mean >= {LAG_MEAN_SATURATED_MS:g} ms)"]
    evidence += busiest(sat or clients)
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
    evidence = [count_line(w, key)]
    confident = True
    if silent:
        headline = "the server stopped answering: its workers are stopped or wedged (timeouts)"
        evidence.append(f"{len(silent)} of {len(w.side('server'))} server workers have not answered the hub "
                        f"for {max(x.silent_s or 0 for x in silent):g} s (SIGSTOP, a debugger, swapping)")
        evidence += busiest(silent)
        fixes = ["resume or restart the stopped server process (kill -CONT PID); a server that pauses under "
                 "load is the finding"]
    else:
        headline = "the server answers too late: its workers are starved of CPU (timeouts)"
        if sat:
            evidence.append(f"{len(sat)} of {len(w.side('server'))} server workers saturated")
            evidence += busiest(sat)
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
        evidence.append(count_line(w, key))
    ghosts = max(w.ghosts, w.ghosts_max)
    if ghosts:
        evidence.append(f"up to {ghosts:,} ghosts in the last seconds: connections the clients hold that no server "
                        "worker accepted (connect() and the first send succeed, no answer ever comes)")
    k = kernel_line(w)
    if k:
        evidence.append(k)
    eff = ctx.backlog if ctx.somaxconn is None else min(ctx.backlog, ctx.somaxconn)
    evidence.append(f"accept queue per listener: server.backlog {ctx.backlog:,}"
                    + (f" capped by net.core.somaxconn {ctx.somaxconn:,}" if ctx.somaxconn is not None
                       and ctx.somaxconn < ctx.backlog else "")
                    + f" (effective {eff:,})")
    silent = w.silent("server") + w.saturated("server")
    if silent:
        evidence.append("server workers not accepting in time: " + "; ".join(busiest(silent, 2)))
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
    evidence = [count_line(w, key),
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
    evidence = [count_line(w, key)]
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
    cause = Failure.of(key).cause
    row = fix_of(cause)
    return Finding("tls", "server" if cause in _SERVER_TLS else "client",
                   f"TLS handshakes fail: {row.means}", (count_line(w, key),), row.fix)


#: A rule names the wall behind a failure, or passes (None) to the next one.
Rule = Callable[[Failure, Window, Context], Finding | None]

#: Causes that name a client-side wall by themselves.
_CLIENT_WALL_CAUSES = frozenset({"EADDRNOTAVAIL", "EADDRINUSE", "route_quota", "EMFILE", "ENFILE"})
def _said_by_the_server(f: Failure, w: Window, ctx: Context) -> Finding | None:
    return server_words(f, w, ctx) if f.side == "client" else None


def _own_late_reads(f: Failure, w: Window, ctx: Context) -> Finding | None:
    """connscale's own late reads look like timeouts: rule them out first."""
    if f.cause == "no_answer_from_server" and w.saturated("client") and not w.silent("server") \
            and _clients_explain_timeouts(w, ctx):
        return measuring_side(w, ctx, f"{count_line(w, f.key)}: pongs read late by the client's own busy loop")
    return None


def _observed_on_the_server(f: Failure, w: Window, ctx: Context) -> Finding | None:
    """What the server's own host shows beats what the clients can tell (a reset, a timeout),
    unless the failure names a client-side wall by itself."""
    client_wall = f.side == "client" and f.cause in _CLIENT_WALL_CAUSES
    return w.server_wall if not client_wall else None


def _descriptors(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if f.cause == "EMFILE":
        found = fd_process(w, ctx, f.key, f.side)
        # The server's accept() failing is counted at once; the observer's reading of that
        # process's limit may come a second later: wait for it (SETTLE) rather than open with less.
        return attrs.evolve(found, confident=False) if f.side == "server" and w.server_watched else found
    if f.cause == "ENFILE":
        return Finding(
            "fd_system", "host", "the system ran out of file descriptors (ENFILE)",
            (count_line(w, f.key),), fix_of("ENFILE").fix,
        )
    return None


def _ports_and_routes(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if f.phase == "connect" and f.cause in ("EADDRNOTAVAIL", "EADDRINUSE") and f.side == "client":
        return ephemeral_ports(w, ctx, f.key)
    if f.cause == "route_quota":
        setup = _agent_setup(ctx, w)
        ips = max(1, len(setup.source_ips))
        return Finding(
            "routes", "client", "every route is at its quota: the configuration cannot place more connections",
            (count_line(w, f.key), f"{ips} source IPs x {ctx.server_ports} server ports x {ctx.per_route_max:,} "
             "(client.per_route_max)"),
            fix_of("route_quota").fix,
        )
    return None


def _accept_queue_or_syns(f: Failure, w: Window, ctx: Context) -> Finding | None:
    d = w.kernel_delta
    overflow = bool(d.listen_overflows or d.listen_drops or d.abort_on_overflow)
    server_busy = bool(w.saturated("server") or w.silent("server"))
    # The kernel counting overflows is the accept queue's own evidence. Ghosts alone
    # also appear while a starved server is slow to accept: then the server is the wall.
    if (f.phase == "first_ping" and f.cause in ("ECONNRESET", "no_answer_from_server", "closed_by_peer")
            and (overflow or ((w.ghosts or w.ghosts_max) and not server_busy))):
        return accept_queue(w, ctx, f.key)
    if f.phase == "connect" and f.cause == "ETIMEDOUT":
        if overflow or d.syn_retrans:
            return accept_queue(w, ctx, f.key)
        return Finding("server_down", "server", "SYNs go unanswered: the server host drops them or is down",
                       (count_line(w, f.key),), fix_of("ETIMEDOUT").fix)
    return None


def _unanswered_or_refused(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if f.cause == "no_answer_from_server":
        return server_starved(w, ctx, f.key)
    if f.cause == "ECONNREFUSED":
        return Finding("server_down", "server", "nothing listens on the server port (connection refused)",
                       (count_line(w, f.key),), fix_of("ECONNREFUSED").fix)
    if f.cause in TLS_CAUSES:
        return tls(w, f.key)
    return None


def _protocol(f: Failure, w: Window, ctx: Context) -> Finding | None:
    protocol = [k for k in w.failures if k.endswith(":protocol_error")]
    if f.cause == "protocol_error" and ctx.protocol not in ("line", "raw"):
        return wrong_server(w, ctx, f.key)
    if f.cause == "protocol_error" or (f.cause in PEER_CLOSED and protocol):
        # The server closes a connection that breaks the protocol: the client sees it closed.
        return Finding("protocol", "server" if any(k.startswith("server:") for k in protocol) else f.side,
                       "the two sides speak different protocols (protocol errors close the connections)",
                       tuple(count_line(w, k) for k in sorted({f.key, *protocol})),
                       fix_of("protocol_error").fix)
    return None


def _closed_by_the_server(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if f.cause not in PEER_CLOSED:
        return None
    lost = [x for x in w.side("server") if not x.alive]
    evidence = [count_line(w, f.key)]
    if lost:
        evidence.append(f"{len(lost)} server workers are down")
    elif w.silent("server"):
        return server_starved(w, ctx, f.key)
    # Why the server closed is in its own report, which may reach the hub a poll after
    # the client's (a protocol error it counted, a worker it lost): wait for it before
    # settling on "down", so the verdict does not depend on which side reported first.
    return Finding("server_down", "server", "the server closed or reset established connections",
                   tuple(evidence), fix_of("closed_by_peer").fix,
                   confident=bool(lost) or f.side == "server")


def _worker_died(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if f.cause != "worker_lost":
        return None
    mem = w.kernel.mem_available_bytes
    evidence = [count_line(w, f.key)]
    if mem is not None and mem < 512 * 2**20:
        return Finding("memory", "host", "the host ran out of memory: a worker died with its connections",
                       (*evidence, f"MemAvailable {mem / 2**20:.0f} MiB"),
                       ("fewer connections per host, more hosts, or more memory",))
    return Finding("worker_lost", f.side, "a worker process died and took its connections with it",
                   tuple(evidence), fix_of("worker_lost").fix)


#: In order: the first rule that names a wall wins.
_RULES: tuple[Rule, ...] = (
    _said_by_the_server, _own_late_reads, _observed_on_the_server, _descriptors, _ports_and_routes,
    _accept_queue_or_syns, _unanswered_or_refused, _protocol, _closed_by_the_server, _worker_died,
)


def name_wall(key: str, w: Window, ctx: Context) -> Finding:
    """The wall behind failure `key` ("phase:cause", "server:phase:cause")."""
    failure = Failure.of(key)
    for rule in _RULES:
        found = rule(failure, w, ctx)
        if found is not None:
            return found
    return Finding("unknown", failure.side, f"failures with cause {failure.cause}", (count_line(w, key),),
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


