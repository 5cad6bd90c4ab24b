"""How work is split: worker counts, per-worker targets and route quotas.

Pure functions, called only by the controller (and by a standalone agent,
which is its own controller): the one place that decides how many
connections each worker holds and over which routes.
"""

from __future__ import annotations

import math
from typing import Sequence

# The fd arithmetic lives in host.limits so that the preflight budget
# (diagnose.budget) plans exactly as the controller does.
from connscale.host.limits import FILL, MAX_WORKERS, per_worker, tuple_cap  # noqa: F401 (re-exported)
from connscale.net.routes import Route


def client_workers(target: int, budget: int, configured: int | str = "auto") -> int:
    """Client workers needed to hold `target` connections."""
    if configured != "auto":
        return int(configured)
    return max(1, math.ceil(target / per_worker(budget)))


def standalone_workers(target: int, budget: int, configured: int | str = "auto") -> int:
    """A standalone client: 0 (hold them in this process) while one budget suffices."""
    if configured == "auto" and target <= budget:
        return 0
    return client_workers(target, budget, configured)


def server_workers(expected: int, budget: int, cores: int, configured: int | str = "auto") -> int:
    """Server workers: every core, and enough fd budgets for `expected`.

    SO_REUSEPORT hashes connections over workers within about 1 %, so the
    head-room of `FILL` covers the imbalance.
    """
    if configured != "auto":
        return int(configured)
    return min(MAX_WORKERS, max(cores, math.ceil(expected / per_worker(budget))))


def split(total: int, capacities: Sequence[int]) -> list[int]:
    """Spread `total` as evenly as the capacities allow (water filling)."""
    n = len(capacities)
    out = [0] * n
    left = total
    open_ = [i for i in range(n) if capacities[i] > 0]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for i in list(open_):
            give = min(share, capacities[i] - out[i], left)
            out[i] += give
            left -= give
            if out[i] >= capacities[i]:
                open_.remove(i)
            if left == 0:
                break
    return out


def shrink(targets: Sequence[int], n: int) -> list[int]:
    """Take `n` away, from the most loaded workers first (keeps them level)."""
    out = list(targets)
    n = min(n, sum(out))
    while n > 0:
        top = max(out)
        idx = [i for i, t in enumerate(out) if t == top]
        second = max([t for t in out if t < top], default=0)
        per = max(1, min(top - second, n // len(idx) or 1))
        for i in idx:
            take = min(per, n)
            out[i] -= take
            n -= take
            if n == 0:
                break
    return out


def route_quotas(routes: Sequence[Route], workers: int, tuple_cap: int) -> list[list[Route]]:
    """Give every worker every route with a share of the tuple's capacity.

    The shares of one (source IP, server IP:port) tuple add up to `tuple_cap`
    (at most the ephemeral range), so no tuple overflows whichever worker
    ends up busiest.
    """
    out: list[list[Route]] = [[] for _ in range(workers)]
    for route in routes:
        base, extra = divmod(tuple_cap, workers)
        for w in range(workers):
            out[w].append(Route(route.src, route.host, route.port, base + (1 if w < extra else 0)))
    return out


def capacity(routes: Sequence[Route], tuple_cap: int) -> int:
    return len(routes) * tuple_cap


def assign(
    target: int,
    budgets: Sequence[int],
    routes: Sequence[Route],
    tuple_cap: int,
    current: Sequence[int] = (),
) -> list[tuple[int, list[Route]]]:
    """Per worker (target, routes) for holding `target` connections in total.

    Growing keeps what each worker already holds and spreads the increase;
    shrinking takes from the most loaded first.
    """
    workers = len(budgets)
    quotas = route_quotas(routes, workers, tuple_cap)
    caps = [min(per_worker(b), sum(r.quota for r in q)) for b, q in zip(budgets, quotas)]
    now = list(current[:workers]) + [0] * (workers - len(current))
    # More workers means smaller per-worker route shares: what a worker holds
    # beyond its new share moves to the others instead of overflowing a tuple.
    now = [min(t, c) for t, c in zip(now, caps)]
    have = sum(now)
    if target >= have:
        room = [max(0, c - t) for c, t in zip(caps, now)]
        extra = split(target - have, room)
        targets = [t + e for t, e in zip(now, extra)]
    else:
        targets = shrink(now, have - target)
    return list(zip(targets, quotas))


def route_rows(routes: Sequence[Route]) -> list[list[object]]:
    """Routes as plain rows for PB and JSON."""
    return [[r.src or "", r.host, r.port, r.quota] for r in routes]
