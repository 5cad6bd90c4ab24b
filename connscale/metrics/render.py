"""Plain-text views of the controller's answers, shared by `ctl` and the console."""

from __future__ import annotations

from typing import Any, Sequence

CLIENT_COLUMNS = ("name", "connected", "host", "workers", "target", "open")


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    table = [list(columns)] + [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def format_stats(stats: dict[str, Any]) -> str:
    s, c, rtt = stats["server"], stats["client"], stats["rtt_ms"]

    def ms(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [
        f"server  open={s['open']} opened={s['opened']} closed={s['closed']} pongs={s['pongs']} "
        f"failures={s['failure_total']} workers={stats['workers']['server']}",
        f"clients open={c['open']} opened={c['opened']} closed={c['closed']} pings={c['pings']} "
        f"pongs={c['pongs']} failures={c['failure_total']} workers={stats['workers']['client']}",
        f"rtt_ms  p50={ms(rtt['p50'])} p90={ms(rtt['p90'])} p99={ms(rtt['p99'])} max={ms(rtt['max'])}",
        f"ghosts  {stats['ghosts']} (client-open minus server-open)",
    ]
    failures = {**{f"client {k}": v for k, v in c["failures"].items()},
                **{f"server {k}": v for k, v in s["failures"].items()}}
    for key in sorted(failures):
        lines.append(f"fail    {key}={failures[key]}")
    for name, agent in sorted(stats.get("clients", {}).items()):
        state = "connected" if agent["connected"] else "disconnected"
        lines.append(f"client  {name}: {state} target={agent['target']} open={agent['open']} "
                     f"connecting={agent['connecting']} workers={len(agent['workers'])}")
    return "\n".join(lines)
