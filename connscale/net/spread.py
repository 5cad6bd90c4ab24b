"""Spreading a pool's connections over its routes, within each route's quota.

A route (`net.routes.Route`) is a (source IP, server IP:port) tuple; one carries
at most ~28k connections (the source's ephemeral ports towards that server
port), and the controller gives each worker a quota per route. `RouteTable`
hands out routes round-robin to the ones below quota, counts each route's load,
and keeps those counts true when the controller sends a new table.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.logger import Logger

from connscale.net.routes import Route

log = Logger()


class RouteTable:
    """The routes of one pool and the connections each carries (`load`).

    A connection knows its route by index (`ClientConnection.route`); -1 is no
    route (one retired by a new table, or a connection a library user opened).
    """

    def __init__(self, routes: Sequence[Route] = ()) -> None:
        self.routes: list[Route] = list(routes)
        self.load: list[int] = [0] * len(self.routes)
        self._next = 0
        self._warned = False

    def __len__(self) -> int:
        return len(self.routes)

    def capacity(self) -> int:
        return sum(r.quota for r in self.routes)

    def get(self, idx: int) -> Route | None:
        """The route at `idx`, or None for -1 or a route a new table retired."""
        return self.routes[idx] if 0 <= idx < len(self.routes) else None

    def take(self) -> int:
        """The next route below its quota, counted as carrying one more; -1 (said
        once per table) when every route is full."""
        routes, load = self.routes, self.load
        count = len(routes)
        for step in range(count):
            i = (self._next + step) % count
            if load[i] < routes[i].quota:
                self._next = i + 1
                load[i] += 1
                return i
        if not self._warned:
            self._warned = True
            log.warn(
                "all {routes} routes are full ({capacity} connections); add source IPs "
                "or server ports to place more",
                routes=count,
                capacity=self.capacity(),
            )
        return -1

    def hold(self, idx: int) -> int:
        """Count one more connection on route `idx` (none for -1); returns `idx`."""
        if idx >= 0:
            self.load[idx] += 1
        return idx

    def release(self, idx: int) -> None:
        """A connection on route `idx` is gone (nothing for -1 or a retired route)."""
        if 0 <= idx < len(self.load):
            self.load[idx] -= 1

    def replace(self, routes: Sequence[Route]) -> list[int]:
        """A new table, with no load yet: each old index's new one (-1 for a route
        that is gone), for the holders of old indexes to move with `hold`.

        Routes are matched by tuple (source, host, port), not by quota: the
        controller changes quotas whenever the number of workers changes.
        """
        old_keys = [r.key() for r in self.routes]
        self.routes = list(routes)
        index = {r.key(): i for i, r in enumerate(self.routes)}
        self.load = [0] * len(self.routes)
        self._next = 0
        self._warned = False
        return [index.get(key, -1) for key in old_keys]
