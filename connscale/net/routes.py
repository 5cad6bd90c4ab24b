"""Routes: the (source IP, server IP:port) tuples a client spreads its connections over.

A leaf module (attrs only), so that `control.plan`, pure arithmetic, can split
routes between workers without importing the client's hot path.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs


@attrs.frozen
class Route:
    """One (source IP, server IP:port) tuple and how many connections it may carry."""

    src: str | None
    host: str
    port: int
    quota: int = 14_000

    def key(self) -> tuple[str | None, str, int]:
        return (self.src, self.host, self.port)


def make_routes(host: str, ports: Sequence[int], sources: Sequence[str], quota: int) -> list[Route]:
    """Every source IP × server port, interleaved so round-robin spreads both."""
    srcs: Sequence[str | None] = list(sources) or [None]
    return [Route(src, host, port, quota) for port in ports for src in srcs]
