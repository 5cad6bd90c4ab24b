"""Plain-text views of the controller's answers, shared by `ctl` and the console."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connscale.metrics.records import Stats

CLIENT_COLUMNS = ("name", "connected", "host", "workers", "target", "open")


def is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, bytes, int, float))


def cell(value: object) -> str:
    """One table cell: "-" for nothing, floats to 3 places, flat lists comma-joined."""
    if value is None:
        return "-"
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.3f}"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(is_scalar(v) for v in value):
        return ",".join(cell(v) for v in value) or "-"
    return repr(value)


def _numeric(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_table(rows: Sequence[Mapping[Any, Any]], columns: Sequence[Any] | None = None,
                 names: Sequence[object] | None = None, empty: str = "(none)",
                 right: Sequence[Any] = ()) -> str:
    """Rows of records as an aligned table: the one renderer of ctl, the console, compare and runs.

    `columns` picks and orders the columns (default: every key, in order of first
    appearance); `names` adds a first, unlabelled column (a dict of records). A
    column whose values are all numbers is right-aligned, so digits line up, and so
    is every column in `right` (numbers already written as text: "3,000", "-12.5%").
    """
    if not rows:
        return empty
    if columns is None:
        found: list[Any] = []
        for row in rows:
            found += [c for c in row if c not in found]
        columns = found
    header = ([""] if names is not None else []) + [str(c) for c in columns]
    labels = list(names) if names is not None else [None] * len(rows)
    body = [([cell(n)] if names is not None else []) + [cell(row.get(c)) for c in columns]
            for n, row in zip(labels, rows)]
    numeric = ([False] if names is not None else []) + [
        c in right or all(_numeric(row[c]) for row in rows if c in row and row[c] is not None) for c in columns]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        return "  ".join(text.rjust(w) if num else text.ljust(w)
                         for text, w, num in zip(line, widths, numeric)).rstrip()

    return "\n".join(render(line) for line in [header, *body])


def format_stats(stats: Stats) -> str:
    s, c, rtt = stats.server, stats.client, stats.rtt_ms

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [
        f"server  open={s.open} opened={s.opened} closed={s.closed} pongs={s.pongs} "
        f"failures={s.failure_total} workers={stats.workers.server}",
        f"clients open={c.open} opened={c.opened} closed={c.closed} pings={c.pings} "
        f"pongs={c.pongs} failures={c.failure_total} workers={stats.workers.client}",
        f"rtt_ms  p50={ms(rtt.p50)} p90={ms(rtt.p90)} p99={ms(rtt.p99)} max={ms(rtt.max)}",
        f"ghosts  {stats.ghosts} (client-open minus server-open)",
    ]
    failures = {**{f"client {k}": v for k, v in c.failures.items()},
                **{f"server {k}": v for k, v in s.failures.items()}}
    for key in sorted(failures):
        lines.append(f"fail    {key}={failures[key]}")
    for name, agent in sorted(stats.clients.items()):
        state = "connected" if agent.connected else "disconnected"
        if agent.connected and agent.stale_s:
            # Its answer is late: these numbers are its last report's, this old.
            state += f" (stale {agent.stale_s:g}s)"
        lines.append(f"client  {name}: {state} target={agent.target} open={agent.open} "
                     f"connecting={agent.connecting} workers={len(agent.workers)}")
    if stats.truncated:
        lines.append(f"note    {stats.truncated}")
    return "\n".join(lines)


def render_stats(data: object) -> str:
    """`format_stats` of the `stats` verb's answer: the record (the console), or its wire form
    (`ctl stats`), checked like any peer's."""
    return format_stats(data if isinstance(data, Stats) else Stats.from_wire(data))
