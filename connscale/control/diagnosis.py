"""The hub's side of the diagnosis: every second's record judged for walls.

Holds the incident detector (`connscale.diagnose.incidents`) and what it judges
against (`Context`: this hub's config and host limits, each agent's
registration). The collector has `annotate` complete every stats record (the
live view, `ctl stats` and the run see the current load, the incidents so far
and the failures not named yet) and `observe` judge every timeline line (which
carries each incident once, on the second it opened).
"""

from __future__ import annotations

from collections.abc import Callable
import attrs

from connscale.config.settings import Config
from connscale.control.registry import Registry
from connscale.diagnose.capacity import Roles
from connscale.diagnose.fleetcheck import FleetCheck, HostShare, fleet, fleet_demand
from connscale.diagnose.incidents import IncidentDetector, load_summary
from connscale.diagnose.window import AgentSetup, Context
from connscale.host.inventory import HostLimits, read_host_limits
from connscale.metrics.records import Stats


class Diagnosis:
    def __init__(self, cfg: Config, registry: Registry, note: Callable[[str], None],
                 host: HostLimits | None = None) -> None:
        self.cfg = cfg
        self.registry = registry
        self.note = note
        self.host = host if host is not None else read_host_limits()
        self.detector = IncidentDetector()

    def context(self) -> Context:
        c, s, h = self.cfg.client, self.cfg.server, self.host
        agents = {}
        for a in self.registry.agents.values():
            info = a.info
            if info is None:
                continue
            port_range = (info.limits or {}).get("port_range")
            agents[a.name] = AgentSetup(
                source_ips=tuple(info.source_ips),
                ephemeral=info.ephemeral or None,
                port_range=(int(port_range[0]), int(port_range[1])) if port_range else None,
                cores=float(info.cores),
                host=info.host,
            )
        return Context(
            interval=c.interval, timeout=c.timeout, backlog=s.backlog,
            server_ports=len(s.ports if c.url is None else c.server_ports), own_server=c.url is None,
            protocol=c.effective_protocol(),
            per_route_max=c.per_route_max, somaxconn=h.somaxconn, tcp_max_syn_backlog=h.tcp_max_syn_backlog,
            abort_on_overflow=h.abort_on_overflow, hub_cores=h.effective_cores, hub_host=h.hostname, agents=agents,
        )

    def annotate(self, stats: Stats) -> Stats:
        """The record with whether connscale itself is the bottleneck right now, which walls
        were met so far, and the failures seen that the detector has not named yet (it
        judges once a second)."""
        return attrs.evolve(stats, load=load_summary(stats), incidents=tuple(self.detector.incidents),
                            unjudged_failures=self.detector.unjudged(stats.failures()))

    def observe(self, line: Stats) -> Stats:
        """Judge one second; the line keeps only the incidents it opened."""
        opened = self.detector.observe(line, self.context())
        for incident in opened:
            self.note(f"incident: {incident.headline} (at {incident.open} open)")
        return attrs.evolve(line, incidents=tuple(opened))

    def fleet(self, target: int | None = None) -> FleetCheck:
        """`connscale ctl check`: this hub's host (the server side) and every connected agent's
        host (its client side, judged on the limits it reported when it registered)."""
        cfg = self.cfg
        target = int(target or cfg.scenario.target)
        hub = read_host_limits()
        shares = [HostShare("hub", hub, fleet_demand(cfg, target, "server"))]
        for a in self.registry.agents.values():
            info = a.info
            if not a.connected or info is None:
                continue
            limits = HostLimits.from_dict(info.limits or {"hostname": info.host})
            # An agent on the hub's machine shares its memory, fds and cores with the
            # server: its budget charges both sides (its ports are still its own).
            roles: Roles = "both" if info.host == hub.hostname else "client"
            if a.name in cfg.clients:  # shown as the operator named it
                limits = attrs.evolve(limits, hostname=cfg.clients[a.name].host)
            shares.append(HostShare(a.name, limits, fleet_demand(cfg, target, roles, a.name, tuple(info.source_ips),
                                                                 info.configured_workers, info.interval, info.rate)))
        return fleet(target, shares, via="hub")
