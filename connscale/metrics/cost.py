"""What connscale itself takes from the box: CPU and memory of every process of a run.

A million connections on one box run ~110 connscale processes beside the server
under test; a user reading the server's figures needs to know what the tool
took. Every process reports its cumulative CPU seconds and its RSS (the
workers in their snapshots, an agent in its report, the hub itself); the hub
turns them into cores per kind of process, per timeline second, with a
`CostMeter`. `connscale run` adds its own process (its scenario, stats poll and
live view) to the summary (`app.summary`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: Kinds of process, in the order they are shown.
KINDS = ("hub", "server_workers", "agents", "client_workers", "run")


def cpu_seconds(resources: Mapping[str, Any]) -> float | None:
    """User + system CPU seconds of a `host.resources.process_resources` reading."""
    try:
        return float(resources["cpu_user_s"]) + float(resources["cpu_system_s"])
    except (KeyError, TypeError, ValueError):
        return None


class CostMeter:
    """Cores and RSS per kind of process between two readings of the same processes.

    A process counts from its second reading on (its first gives no rate); one
    whose CPU went backwards (a new process under a reused key) starts again.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, object], tuple[float, float]] = {}

    def observe(self, now: float, readings: Iterable[tuple[str, object, Mapping[str, Any]]]) -> dict[str, Any]:
        """`readings`: (kind, key, resources) for every process (key: its pid or name).

        Returns {"cores": total, "rss_bytes": total, "processes": n,
        "by_kind": {kind: {"cores", "rss_bytes", "processes"}}}."""
        by_kind: dict[str, dict[str, float]] = {}
        seen: dict[tuple[str, object], tuple[float, float]] = {}
        for kind, key, resources in readings:
            cpu = cpu_seconds(resources)
            row = by_kind.setdefault(kind, {"cores": 0.0, "rss_bytes": 0, "processes": 0})
            row["processes"] += 1
            row["rss_bytes"] += int(resources.get("rss_bytes", 0) or 0)
            if cpu is None:
                continue
            seen[(kind, key)] = (now, cpu)
            before = self._last.get((kind, key))
            if before is not None and now > before[0] and cpu >= before[1]:
                row["cores"] += (cpu - before[1]) / (now - before[0])
        self._last = seen
        for row in by_kind.values():
            row["cores"] = round(row["cores"], 4)
        ordered = {k: by_kind[k] for k in sorted(by_kind, key=lambda k: (KINDS.index(k) if k in KINDS else 99, k))}
        return {
            "cores": round(sum(r["cores"] for r in by_kind.values()), 4),
            "rss_bytes": int(sum(r["rss_bytes"] for r in by_kind.values())),
            "processes": int(sum(r["processes"] for r in by_kind.values())),
            "by_kind": ordered,
        }


def mean_cost(lines: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The mean cores and the largest RSS of timeline lines' `cost` (None without any)."""
    costs = [line["cost"] for line in lines if isinstance(line.get("cost"), Mapping)]
    # The first line's cores are from processes' first readings: no rate yet.
    costs = costs[1:] if len(costs) > 1 else costs
    if not costs:
        return None
    kinds: dict[str, dict[str, float]] = {}
    for cost in costs:
        for kind, row in cost.get("by_kind", {}).items():
            k = kinds.setdefault(kind, {"cores": 0.0, "rss_bytes": 0, "processes": 0})
            k["cores"] += row.get("cores", 0.0) / len(costs)
            k["rss_bytes"] = max(k["rss_bytes"], row.get("rss_bytes", 0))
            k["processes"] = max(k["processes"], row.get("processes", 0))
    for row in kinds.values():
        row["cores"] = round(row["cores"], 4)
    return {
        "cores": round(sum(c.get("cores", 0.0) for c in costs) / len(costs), 4),
        "rss_bytes": max(int(c.get("rss_bytes", 0)) for c in costs),
        "processes": max(int(c.get("processes", 0)) for c in costs),
        "seconds": len(costs),
        "by_kind": kinds,
    }


def with_process(cost: Mapping[str, Any], kind: str, cores: float, rss_bytes: int) -> dict[str, Any]:
    """`cost` (a `mean_cost`) with one more process of `kind` (the run itself)."""
    out = {**cost, "by_kind": dict(cost.get("by_kind", {}))}
    out["by_kind"][kind] = {"cores": round(cores, 4), "rss_bytes": rss_bytes, "processes": 1}
    out["cores"] = round(out.get("cores", 0.0) + cores, 4)
    out["rss_bytes"] = int(out.get("rss_bytes", 0)) + rss_bytes
    out["processes"] = int(out.get("processes", 0)) + 1
    return out


def describe(cost: Mapping[str, Any] | None) -> str:
    """One line: 'connscale itself: 0.41 cores, 3,412 MB RSS in 109 processes (...)'."""
    if not cost:
        return "connscale itself: not measured"
    parts = ", ".join(f"{kind.replace('_', ' ')} {row.get('cores', 0):.2f}"
                      for kind, row in cost.get("by_kind", {}).items())
    return (f"connscale itself: {cost.get('cores', 0):.2f} cores, {cost.get('rss_bytes', 0) / 1e6:,.0f} MB RSS "
            f"in {cost.get('processes', 0)} processes ({parts})")
