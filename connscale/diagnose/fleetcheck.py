"""A hub's check: every host of a fleet against the target, and the target's split across them.

`fleet` judges the server side (the hub's host) against the sum of the client sides (each
agent's host on its own limits, diagnose/budget.py); `split` gives each agent its share in
proportion to what its host reaches; `render_fleet` and `render_split` say both in words.
The check's answer (`FleetCheck`, a `HostBudget` per host) crosses PB as a verb's answer and
is printed by `connscale ctl check` and `connscale check -c`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from connscale.config.endpoints import is_loopback_host
from connscale.records.base import Record, boolean, choice, field, nested, optional, seq, text
from connscale.diagnose.budget import budget
from connscale.diagnose.capacity import Budget, Demand, Limit, Roles
from connscale.diagnose.records import AgentShare, Preflight, PreflightLimit
from connscale.host.inventory import HostLimits
from connscale.metrics.records import COUNT


# -- the check's answer -----------------------------------------------------------------------

@attrs.frozen(kw_only=True)
class HostBudget(Record):
    """One host of a fleet's check: what its limits let through (`diagnose.fleetcheck.fleet`)."""

    name: str = field(text(255), doc="hub, or the agent's name")
    host: str = field(text(255), default="", doc="its host name")
    roles: str = field(text(16), default="client", doc="server (the hub's host), client, or both")
    capacity: int | None = field(optional(COUNT), default=None, doc="connections it reaches (None: unknown)")
    binding: PreflightLimit | None = field(optional(nested(PreflightLimit)), default=None,
                                           doc="the limit that binds first on it")
    budget: Preflight = field(nested(Preflight), doc="every limit of it")


@attrs.frozen(kw_only=True)
class FleetBinding(Record):
    """What binds a fleet: its server side, or its client sides together."""

    side: str = field(choice("server", "clients"), doc="server, or clients (together)")
    capacity: int = field(COUNT, doc="connections that side reaches")
    host: str = field(text(255), default="", doc="the host (its name in the fleet) whose limit binds first")
    limit: PreflightLimit | None = field(optional(nested(PreflightLimit)), default=None, doc="that limit")


@attrs.frozen(kw_only=True)
class FleetCheck(Record):
    """`connscale ctl check` and `connscale check -c` with `clients:`: every host of a fleet."""

    target: int = field(COUNT, doc="connections wanted")
    reachable: int = field(COUNT, doc="connections the fleet reaches")
    ok: bool = field(boolean, doc="it reaches the target")
    hosts: tuple[HostBudget, ...] = field(seq(nested(HostBudget), 4096), default=(), doc="every host")
    binding: FleetBinding | None = field(optional(nested(FleetBinding)), default=None,
                                         doc="what binds below the target (None: nothing)")
    via: str = field(text(64), default="", doc="how the agents' limits were read: hub (their registrations), "
                                               "ssh (each host asked), or empty")

    def client_hosts(self) -> tuple[HostBudget, ...]:
        return tuple(h for h in self.hosts if h.roles != "server")


# -- the check ---------------------------------------------------------------------------------


def fleet_demand(cfg: Any, target: int, roles: Roles, name: str = "", source_ips: tuple[str, ...] = (),
                 workers: int | str | None = None, interval: float = 0.0, rate: float = 0.0) -> Demand:
    """What a fleet run asks of one host: the hub's (roles server) or agent `name`'s (its source
    addresses, workers, interval and rate as it registered, else as configured)."""
    c = cfg.client
    return Demand(target=target, roles=roles, source_ips=source_ips, server_ports=len(cfg.server.ports),
                  per_route_max=c.per_route_max, client_workers=c.workers if workers is None else workers,
                  server_workers=cfg.server.workers, interval=interval or c.interval, rate=rate or c.rate,
                  backlog=cfg.server.backlog,
                  source_key=f"clients.{name}.source_ips" if name in cfg.clients else "client.source_ips",
                  server_loopback=is_loopback_host(c.server_host),
                  # As Demand.from_config: a host with the server pays for TLS when the server speaks it.
                  tls=(cfg.server.tls.enabled or (roles == "both" and c.tls.enabled)) if roles != "client"
                  else c.tls.enabled)


@attrs.frozen
class HostShare:
    """One host of a fleet: what it reads and what it runs."""

    name: str                      # "hub", or the agents' names on it
    limits: HostLimits
    demand: Demand


def _capacity(b: Budget) -> tuple[int | None, Limit | None]:
    first = b.counted[:1]
    return (first[0].capacity, first[0]) if first else (None, None)


def _preflight_limit(lim: Limit, binding: bool = False) -> PreflightLimit:
    return PreflightLimit(key=lim.key, side=lim.side, capacity=lim.capacity, detail=lim.detail, fix=lim.fix,
                          warn=lim.warn, binding=binding)


def preflight_of(b: Budget) -> Preflight:
    """A budget as the record a summary and a fleet check carry."""
    return Preflight.from_wire(b.to_dict())


def fleet(target: int, hosts: Sequence[HostShare], via: str = "") -> FleetCheck:
    """The server side (the hub's host) against the sum of the client sides (every agent's
    host, each judged on its own limits; one on the hub's machine with both sides' costs)."""
    per_host: list[HostBudget] = []
    server: tuple[int, str, Limit | None] | None = None
    clients: list[tuple[int, str, Limit | None]] = []
    for share in hosts:
        b = budget(share.limits, share.demand)
        cap, lim = _capacity(b)
        per_host.append(HostBudget(name=share.name, host=share.limits.hostname, roles=share.demand.roles,
                                   capacity=cap, binding=_preflight_limit(lim) if lim else None,
                                   budget=preflight_of(b)))
        if cap is None:
            continue
        if share.demand.roles == "server":
            server = (cap, share.name, lim)
        else:
            # An agent on the hub's machine is judged with both sides' costs ("both").
            clients.append((cap, share.name, lim))
    candidates: list[tuple[int, str, str, Limit | None]] = []
    if server is not None:
        candidates.append((server[0], "server", server[1], server[2]))
    if clients:
        worst = min(clients, key=lambda c: c[0])
        candidates.append((sum(c[0] for c in clients), "clients", worst[1], worst[2]))
    reachable = min([target, *(c[0] for c in candidates)])
    bound = min(candidates, key=lambda c: c[0]) if candidates else None
    binding = None
    if bound is not None and bound[0] < target:
        binding = FleetBinding(side=bound[1], capacity=bound[0], host=bound[2],
                               limit=_preflight_limit(bound[3]) if bound[3] else None)
    return FleetCheck(target=target, reachable=reachable, ok=reachable >= target, hosts=tuple(per_host),
                      binding=binding, via=via)


def split(target: int, hosts: Sequence[HostBudget]) -> tuple[AgentShare, ...]:
    """The target across the client hosts in proportion to what each reaches (never more than
    that): a host that holds half as much is asked for half as much, so every host runs at the
    same share of its limit. A host whose capacity is unknown counts as reaching the target.
    Shares are whole connections (largest remainders) and add up to the target, or to what
    the fleet reaches when that is less."""
    caps = [h.capacity if h.capacity is not None else target for h in hosts]
    total = sum(caps)
    goal = min(target, total)
    exact = [goal * c / total if total else 0.0 for c in caps]
    shares = [min(int(x), c) for x, c in zip(exact, caps)]
    order = sorted(range(len(hosts)), key=lambda i: (-(exact[i] - shares[i]), -caps[i], hosts[i].name))
    left = goal - sum(shares)
    for i in order:
        if left <= 0:
            break
        if shares[i] < caps[i]:
            shares[i] += 1
            left -= 1
    out = []
    for h, share, cap in zip(hosts, shares, caps):
        lim = h.binding
        out.append(AgentShare(agent=h.name, host=h.host, share=share, capacity=h.capacity,
                              limit=lim.key if lim else "", why=lim.detail if lim else ""))
    return tuple(out)


def render_split(shares: Sequence[AgentShare], target: int) -> list[str]:
    """The split in words, one line per agent (printed by `connscale run`)."""
    lines = []
    for s in shares:
        cap = f"reaches {s.capacity:,}" if s.capacity is not None else "capacity unknown"
        why = f"; {s.limit} binds first: {s.why}" if s.limit else ""
        lines.append(f"{s.agent} on {s.host or '?'}: {s.share:,} of {target:,} ({cap}{why})")
    return lines


def render_fleet(result: FleetCheck | dict[str, Any]) -> str:
    """What `connscale ctl check` and `connscale check -c` with `clients:` print; every fix names
    the host it applies to."""
    if not isinstance(result, FleetCheck):
        result = FleetCheck.from_wire(result)  # a verb's answer, as it crossed PB
    via = {"hub": " (agents' limits as they registered with the hub)",
           "ssh": " (each host asked over ssh)"}.get(result.via, "")
    lines = [f"target {result.target:,} connections over {len(result.hosts)} host(s){via}"]
    for h in result.hosts:
        cap = f"{h.capacity:,}" if h.capacity is not None else "?"
        lim = h.binding
        lines.append(f"  {h.name:<16} {h.host:<16} {h.roles:<6} reaches {cap:>12}"
                     + (f"  ({lim.key}: {lim.detail})" if lim else ""))
    clients = result.client_hosts()
    if clients:
        names = ", ".join(f"{h.name} ({h.host})" for h in clients)
        lines.append(f"agents: {names}")
    b = result.binding
    if b is None:
        lines.append(f"verdict: these hosts can reach {result.target:,} connections.")
    else:
        lim = b.limit
        side = "the server side" if b.side == "server" else "the client sides together"
        lines.append(f"verdict: {side} reach {b.capacity:,} of {result.target:,}: "
                     f"{lim.key if lim else '?'} on {b.host} binds first ({lim.detail if lim else '?'}).")
        # Each short host's own fix, named: a fix for one host is no fix for another.
        for h in result.hosts:
            if b.side == "clients" and h.roles == "server":
                continue
            if b.side == "server" and h.roles != "server":
                continue
            for limit in h.budget.limits:
                if limit.binding and limit.fix and (limit.capacity or 0) < result.target:
                    lines.append(f"fix on {h.name} ({h.host}): {limit.key}: {limit.fix}")
        if b.side == "clients":
            lines.append("fix: or more agents (clients: in the config)")
    for h in result.hosts:
        for limit in h.budget.limits:
            if limit.warn:
                lines.append(f"warning: {h.name} ({h.host}): {limit.key}: {limit.detail}")
    return "\n".join(lines)
