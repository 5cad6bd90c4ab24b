"""What connscale itself takes from the box: CPU and memory of every process of a run.

A million connections on one box run ~110 connscale processes beside the server
under test; a user reading the server's figures needs to know what the tool
took. Every process reports its cumulative CPU seconds and its RSS (the
workers in their snapshots, an agent and an observer in their reports, the hub
itself); the hub turns them into cores per kind of process, per timeline second,
with a `CostMeter` (`Stats.cost`). `connscale run` adds its own process (its
scenario, stats poll and live view) to the summary's `cost_final_hold`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from connscale.records.base import Record, field, integer, mapping, nested, number, optional, text
from connscale.metrics.workers import cpu_seconds, rss_of

#: Kinds of process, in the order they are shown.
KINDS = ("hub", "server_workers", "agents", "client_workers", "observers", "run")

_CORES = number(0, 1e6)
_BYTES = integer(0, 1 << 62)
_PROCESSES = integer(0, 1 << 30)


@attrs.frozen
class KindCost(Record):
    """The processes of one kind (hub, server_workers, agents, client_workers, observers, run)."""

    cores: float = field(_CORES, default=0.0, doc="cores they used together")
    rss_bytes: int = field(_BYTES, default=0, doc="their RSS together, bytes")
    processes: int = field(_PROCESSES, default=0, doc="how many")


@attrs.frozen
class Cost(Record):
    """connscale's own CPU and RSS: one timeline second's (`Stats.cost`), or a span's
    mean cores and largest RSS (`Summary.cost_final_hold`, with `seconds`)."""

    cores: float = field(_CORES, default=0.0, doc="cores connscale's processes used together")
    rss_bytes: int = field(_BYTES, default=0, doc="their RSS together, bytes")
    processes: int = field(_PROCESSES, default=0, doc="how many processes")
    by_kind: Mapping[str, KindCost] = field(mapping(text(32), nested(KindCost), 16), factory=dict,
                                            doc="the same per kind of process, in the order of metrics.cost.KINDS")
    seconds: int | None = field(optional(integer(0, 1 << 40)), default=None,
                                doc="a span's: the timeline seconds averaged (null in a line)")

    def describe(self) -> str:
        """One line: 'connscale itself: 0.41 cores, 3,412 MB RSS in 109 processes (...)'."""
        parts = ", ".join(f"{kind.replace('_', ' ')} {row.cores:.2f}" for kind, row in self.by_kind.items())
        return (f"connscale itself: {self.cores:.2f} cores, {self.rss_bytes / 1e6:,.0f} MB RSS "
                f"in {self.processes} processes ({parts})")


def _ordered(by_kind: Mapping[str, KindCost]) -> dict[str, KindCost]:
    return {k: by_kind[k] for k in sorted(by_kind, key=lambda k: (KINDS.index(k) if k in KINDS else 99, k))}


class CostMeter:
    """Cores and RSS per kind of process between two readings of the same processes.

    A process counts from its second reading on (its first gives no rate); one
    whose CPU went backwards (a new process under a reused key) starts again.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, object], tuple[float, float]] = {}

    def observe(self, now: float, readings: Iterable[tuple[str, object, Mapping[str, Any]]]) -> Cost:
        """`readings`: (kind, key, resources) for every process (key: its pid or name)."""
        cores: dict[str, float] = {}
        rss: dict[str, int] = {}
        count: dict[str, int] = {}
        seen: dict[tuple[str, object], tuple[float, float]] = {}
        for kind, key, resources in readings:
            cpu = cpu_seconds(resources)
            count[kind] = count.get(kind, 0) + 1
            rss[kind] = rss.get(kind, 0) + int(rss_of(resources) or 0)
            cores.setdefault(kind, 0.0)
            if cpu is None:
                continue
            seen[(kind, key)] = (now, cpu)
            before = self._last.get((kind, key))
            if before is not None and now > before[0] and cpu >= before[1]:
                cores[kind] += (cpu - before[1]) / (now - before[0])
        self._last = seen
        by_kind = _ordered({k: KindCost(round(cores[k], 4), rss[k], count[k]) for k in count})
        return Cost(round(sum(cores.values()), 4), sum(rss.values()), sum(count.values()), by_kind)


def mean_cost(costs: Iterable[Cost | None]) -> Cost | None:
    """The mean cores and the largest RSS of timeline lines' `cost` (None without any)."""
    had = [c for c in costs if c is not None]
    # The first line's cores are from processes' first readings: no rate yet.
    had = had[1:] if len(had) > 1 else had
    if not had:
        return None
    n = len(had)
    kinds: dict[str, KindCost] = {}
    for cost in had:
        for kind, row in cost.by_kind.items():
            k = kinds.get(kind, KindCost())
            kinds[kind] = KindCost(k.cores + row.cores / n, max(k.rss_bytes, row.rss_bytes),
                                   max(k.processes, row.processes))
    return Cost(
        cores=round(sum(c.cores for c in had) / n, 4),
        rss_bytes=max(c.rss_bytes for c in had),
        processes=max(c.processes for c in had),
        by_kind={kind: attrs.evolve(row, cores=round(row.cores, 4)) for kind, row in kinds.items()},
        seconds=n,
    )


def with_process(cost: Cost, kind: str, cores: float, rss_bytes: int) -> Cost:
    """`cost` (a `mean_cost`) with one more process of `kind` (the run itself)."""
    return attrs.evolve(
        cost,
        cores=round(cost.cores + cores, 4), rss_bytes=cost.rss_bytes + rss_bytes, processes=cost.processes + 1,
        by_kind=_ordered({**cost.by_kind, kind: KindCost(round(cores, 4), rss_bytes, 1)}),
    )


def describe(cost: Cost | None) -> str:
    """One line: 'connscale itself: 0.41 cores, 3,412 MB RSS in 109 processes (...)'."""
    return "connscale itself: not measured" if cost is None else cost.describe()
