"""What an agent agrees to do, whoever orders it.

Orders reach an agent only from a hub that proved the secret, but a typo, a
bug or a hub taken over must still not turn a load generator into a fork bomb
or a flood aimed at someone else. So an agent checks every order against its
own limits before passing it on: no more workers than the target needs given
its fd budget (and no more than memory holds), no worker above its fd budget,
only its own source addresses, and only the hub's servers as destinations.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence

from connscale.control import plan
from connscale.control.errors import ControlError
from connscale.procs.records import WorkerOrder

#: Resident memory of one client worker before its first connection (~34 MB measured; rounded up).
WORKER_MEMORY = 40 * 1024 * 1024


def addresses_of(host: str) -> set[str]:
    """An IP literal, or the addresses a name resolves to (once, at start-up)."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except OSError:
        return set()


def check_worker_memory(more: int, available: int | None, who: str, fix: str = "",
                        noun: str = "more workers") -> None:
    """Refuse to start `more` workers when their start-up memory alone exceeds what is available.

    A worker costs ~30 MB before its first connection, so a typo in a worker count
    or a target must end in one line, not in a host swapping under hundreds of
    interpreters. `available` is MemAvailable, or the room left under a cgroup limit.
    """
    if available is not None and more * WORKER_MEMORY > available:
        raise ControlError(
            f"{who} {more} {noun}: they need about {more * WORKER_MEMORY >> 20:,} MB, "
            f"{available >> 20:,} MB is available{fix}"
        )


class OrderBounds:
    def __init__(self, budget: int, configured_workers: int | str, sources: Iterable[str],
                 destinations: Iterable[str], memory: Callable[[], int | None] = lambda: None) -> None:
        self.budget = budget
        self.configured_workers = configured_workers
        self.sources = {str(ipaddress.ip_address(s)) for s in sources}
        self.destinations = set()
        for host in destinations:
            self.destinations |= addresses_of(host)
        self.memory = memory

    def workers(self, count: int, target: int, running: int) -> None:
        """May the agent run `count` workers for `target` connections (`running` already do)?"""
        if count <= running:
            return
        if count > plan.MAX_WORKERS:
            raise ControlError(f"agent refused {count} workers: at most {plan.MAX_WORKERS}")
        needed = plan.client_workers(target, self.budget or 1, self.configured_workers)
        if count > max(needed, running, 1):
            raise ControlError(
                f"agent refused {count} workers: {target} connections need {needed} "
                f"with a budget of {self.budget} each"
            )
        check_worker_memory(count - running, self.memory(), "agent refused")

    def orders(self, orders: Sequence[WorkerOrder], budgets: Sequence[int]) -> None:
        """Targets within each worker's fd budget; routes from our addresses to the hub's servers."""
        if len(orders) > max(len(budgets), 1):
            raise ControlError(f"agent refused orders for {len(orders)} workers: it runs {len(budgets)}")
        for i, order in enumerate(orders):
            budget = budgets[i] if i < len(budgets) else self.budget
            if budget and order.target > budget:
                raise ControlError(f"agent refused {order.target} connections for worker {i + 1}: "
                                   f"its fd budget is {budget}")
            for route in order.routes:
                if route.src is not None and route.src not in self.sources:
                    raise ControlError(f"agent refused a route from {route.src}: not one of its source "
                                       f"addresses ({', '.join(sorted(self.sources)) or 'none configured'})")
                if route.host not in self.destinations:
                    raise ControlError(f"agent refused a route to {route.host}:{route.port}: not the hub's "
                                       f"servers ({', '.join(sorted(self.destinations))})")

