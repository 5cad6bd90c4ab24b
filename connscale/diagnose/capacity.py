"""What a configuration asks of one host (`Demand`) and what the capacity check answers: each
`Limit` (how many connections it lets through, the evidence, the fix) and the `Budget` they make.

The limits themselves, one function each, are diagnose/budget.py; a fleet's check is
diagnose/fleetcheck.py.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from connscale.config.endpoints import is_loopback_host
from connscale.diagnose.costs import (
    TLS_US_PER_CONNECT,
    TLS_US_PER_ROUNDTRIP,
    TLS_USER_BYTES,
    US_PER_CONNECT,
    US_PER_ROUNDTRIP,
    ConnectionCosts,
)

Roles = Literal["both", "server", "client"]


@attrs.frozen
class Demand:
    """What a configuration asks of one host."""

    target: int
    roles: Roles = "both"                 # both: `connscale run` (hub and agent here)
    source_ips: tuple[str, ...] = ()      # () = the kernel's choice: one address
    server_ports: int = 1
    per_route_max: int = 14_000
    client_workers: int | str = "auto"
    server_workers: int | str = "auto"
    interval: float = 5.0
    rate: float = 2000.0
    backlog: int = 4096
    # A run's ramp: None outside `connscale run`.
    time_limit: float | None = None
    holds: float = 0.0                    # seconds of holds between the ramp's steps and at the end
    costs: ConnectionCosts = attrs.Factory(ConnectionCosts)
    tls: bool = False                     # the connections speak TLS (client.tls / server.tls)
    #: The key a fix of the source addresses names (clients.NAME.source_ips for a fleet's host).
    source_key: str = "client.source_ips"
    #: The server is on loopback (only then are 127.x sources a fix).
    server_loopback: bool = True

    @property
    def routes(self) -> int:
        return max(1, len(self.source_ips)) * self.server_ports

    @property
    def sides(self) -> tuple[str, ...]:
        return ("client", "server") if self.roles == "both" else (self.roles,)

    @classmethod
    def from_config(cls, cfg: Any, target: int | None = None, roles: Roles = "both") -> "Demand":
        """From a `Config`: the run's scenario when both roles are here, the client's otherwise."""
        sc = cfg.scenario
        run = roles == "both"
        return cls(
            target=int(target if target is not None else (sc.target if roles != "client" else cfg.client.connections)),
            roles=roles,
            source_ips=tuple(cfg.client.source_ips),
            # The controller routes agents to the ports the hub serves.
            server_ports=len(cfg.server.ports if roles != "client" else cfg.client.server_ports),
            per_route_max=cfg.client.per_route_max,
            client_workers=cfg.client.workers,
            server_workers=cfg.server.workers,
            interval=cfg.client.interval,
            rate=sc.rate if run else cfg.client.rate,
            backlog=cfg.server.backlog,
            time_limit=sc.time_limit if run else None,
            holds=(sc.hold * max(0, sc.steps - 1) + sc.final_hold) if run else 0.0,
            # In a run the clients speak TLS when the server does (app/run.own_tls).
            tls=cfg.client.tls.enabled if roles == "client" else cfg.server.tls.enabled or (
                run and cfg.client.tls.enabled),
            server_loopback=is_loopback_host(cfg.client.server_host),
        )

    def user_bytes(self, side: str) -> float:
        # A run's own measured figure (`--measured`) is what its connections cost, TLS or not.
        return self.costs.user(side) + (TLS_USER_BYTES[side] if self.tls and not self.costs.measured else 0)

    def us_per_connect(self, side: str) -> float:
        return US_PER_CONNECT[side] + (TLS_US_PER_CONNECT[side] if self.tls else 0.0)

    def us_per_roundtrip(self, side: str) -> float:
        return US_PER_ROUNDTRIP[side] + (TLS_US_PER_ROUNDTRIP[side] if self.tls else 0.0)


@attrs.frozen
class Limit:
    """One limit: how many connections it lets through and how to lift it."""

    key: str
    side: str                    # client, server, host (shared by both sides), run
    capacity: int | None         # None: bounds no count (a risk, or not applicable here)
    detail: str                  # the evidence, in words, with the numbers
    fix: str | None = None       # the exact change that lifts it
    warn: bool = False           # a risk worth saying even when it is not a count

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class Budget:
    target: int
    limits: tuple[Limit, ...]
    host: str = ""
    roles: str = "both"

    @property
    def counted(self) -> list[Limit]:
        return sorted((lim for lim in self.limits if lim.capacity is not None), key=lambda lim: lim.capacity or 0)

    @property
    def binding(self) -> Limit | None:
        """The limit that binds first (the smallest capacity), if any binds below the target."""
        first = self.counted[:1]
        return first[0] if first and (first[0].capacity or 0) < self.target else None

    @property
    def reachable(self) -> int:
        first = self.counted[:1]
        return min(self.target, first[0].capacity or 0) if first else self.target

    @property
    def ok(self) -> bool:
        return self.reachable >= self.target

    @property
    def short(self) -> list[Limit]:
        """Every limit below the target, first-binding first: all of them need fixing."""
        return [lim for lim in self.counted if (lim.capacity or 0) < self.target]

    @property
    def warnings(self) -> list[Limit]:
        return [lim for lim in self.limits if lim.warn]

    def reason(self) -> str:
        """One line: why the target cannot be reached (empty when it can)."""
        b = self.binding
        if b is None:
            return ""
        return f"{b.key} ({b.side}) allow {b.capacity:,} of {self.target:,} connections: {b.detail}; fix: {b.fix}"

    def to_dict(self) -> dict[str, Any]:
        b = self.binding
        return {
            "target": self.target,
            "reachable": self.reachable,
            "ok": self.ok,
            "host": self.host,
            "roles": self.roles,
            "binding": b.key if b else None,
            "limits": [dict(lim.to_dict(), binding=lim is b) for lim in self.limits],
            "warnings": [f"{lim.key}: {lim.detail}" + (f"; fix: {lim.fix}" if lim.fix else "") for lim in self.warnings],
        }
