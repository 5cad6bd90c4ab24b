"""Memory per held connection, both ends, user and kernel, from a run's timeline.

Every quantity is a level the timeline records each second; what one connection
costs is its growth from the last second before the first connection opened
(the baseline) to a later second, over the connections opened meanwhile:

* the observed server's RSS and PSS (the observer's target: Redis, nginx, or
  connscale's own server workers), user memory;
* connscale's own workers, per side (their RSS as the workers report it);
* the kernel of the observer's host: the socket slab caches (`TCP`,
  `sock_inode_cache`, `filp`, `eventpoll_epi`, ...) and TCP buffer memory
  (sockstat `mem` pages). Both ends of a connection count there when the
  clients run on that host too (`connscale run` on one box).

Taken twice: when the ramp has just reached the target (the connections are
open, most have not pinged yet) and at the end of the final hold (every one has
pinged, buffers and timers in use). Slab and sockstat are the whole host's:
another program opening sockets meanwhile counts too, which a run on a quiet host
avoids. Pure: the report re-derives the table from the run directory alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connscale.diagnose.budget import ConnectionCosts
from connscale.host.observed import HostRow, TargetRow
from connscale.metrics.phases import FINAL_HOLD, STOP

#: Quantities of the table: key, what it is in words, user or kernel, whose.
QUANTITIES: tuple[tuple[str, str, str, str], ...] = (
    ("server_rss", "server process RSS", "user", "server"),
    ("server_pss", "server process PSS", "user", "server"),
    ("connscale_server_rss", "connscale server workers RSS", "user", "server"),
    ("connscale_client_rss", "connscale client workers RSS", "user", "client"),
    ("kernel_slab", "kernel socket slab", "kernel", "host"),
    ("kernel_tcp_mem", "kernel TCP buffers", "kernel", "host"),
    ("kernel", "kernel total", "kernel", "host"),
)


def observed(record: Mapping[str, Any]) -> tuple[TargetRow | None, HostRow | None]:
    """The first observer's first target and its host, read back into their records."""
    for row in (record.get("observers") or {}).values():
        if not isinstance(row, Mapping) or not row.get("targets"):
            continue
        try:
            return TargetRow.from_wire(row["targets"][0]), HostRow.from_wire(row.get("host") or {})
        except Exception:  # an old or foreign line: not this table's to judge
            return None, None
    return None, None


def levels(record: Mapping[str, Any]) -> dict[str, float]:
    """Every quantity's level at one second (those it has)."""
    out: dict[str, float] = {}
    target, host = observed(record)
    if target is not None and target.alive and target.processes:
        out["server_rss"] = float(target.rss)
        if target.pss is not None:
            out["server_pss"] = float(target.pss)
    if host is not None:
        if host.socket_slab_bytes is not None:
            out["kernel_slab"] = float(host.socket_slab_bytes)
        if host.tcp_mem_bytes is not None:
            out["kernel_tcp_mem"] = float(host.tcp_mem_bytes)
        if "kernel_slab" in out and "kernel_tcp_mem" in out:
            out["kernel"] = out["kernel_slab"] + out["kernel_tcp_mem"]
    server = [w for w in record.get("server_workers") or () if w.get("alive", True)]
    if server:
        out["connscale_server_rss"] = float(sum((w.get("resources") or {}).get("rss_bytes", 0) for w in server))
    clients = [w for a in (record.get("clients") or {}).values() if a.get("connected", True)
               for w in a.get("workers") or () if w.get("alive", True)]
    if clients:
        out["connscale_client_rss"] = float(sum((w.get("resources") or {}).get("rss_bytes", 0) for w in clients))
    return out


def _open(record: Mapping[str, Any]) -> int:
    return int((record.get("client") or {}).get("open", 0))


def baseline_index(records: Sequence[Mapping[str, Any]]) -> int | None:
    """The last second before the first connection opened that the observer read."""
    best = None
    for i, r in enumerate(records):
        if _open(r) > 0:
            break
        if observed(r)[0] is not None:
            best = i
    return best


def _moments(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Index of "opened" (the first second at the peak count, before the final hold) and
    "pinging" (the last second of the final hold, else the last before the stop)."""
    live = [i for i, r in enumerate(records) if r.get("phase") != STOP]
    if not live:
        return {}
    peak = max(_open(records[i]) for i in live)
    out = {}
    reached = [i for i in live if _open(records[i]) >= peak and peak > 0]
    if reached:
        out["opened"] = reached[0]
    final = [i for i in live if records[i].get("phase") == FINAL_HOLD]
    out["pinging"] = final[-1] if final else live[-1]
    return out


def per_connection(records: Sequence[Mapping[str, Any]], base: int, at: int) -> dict[str, float]:
    """Bytes per connection of each quantity from `base` to `at`."""
    added = _open(records[at]) - _open(records[base])
    if added <= 0:
        return {}
    b, a = levels(records[base]), levels(records[at])
    return {k: (a[k] - b[k]) / added for k in a if k in b}


def memory_table(records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The table for summary.json and the report; None without an observed baseline."""
    base = baseline_index(records)
    if base is None:
        return None
    moments = _moments(records)
    rows = []
    columns = {name: per_connection(records, base, i) for name, i in moments.items()}
    for key, what, kind, side in QUANTITIES:
        # Unrounded: the report rounds once, as it shows them.
        values = {name: col[key] for name, col in columns.items() if key in col}
        if values:
            rows.append({"key": key, "what": what, "kind": kind, "side": side, **values})
    if not rows:
        return None
    target, host = observed(records[moments.get("pinging", base)])
    return {
        "baseline": {"elapsed_s": records[base].get("elapsed_s"), "open": _open(records[base])},
        **{name: {"elapsed_s": records[i].get("elapsed_s"), "open": _open(records[i]),
                  "phase": records[i].get("phase")} for name, i in moments.items()},
        "server": {"label": target.label, "pid": target.pid} if target is not None else None,
        "host": host.hostname if host is not None else "",
        "rows": rows,
    }


def per_second(records: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """quantity -> (open, bytes per connection since the baseline) for every second after it: the
    report plots each against open connections."""
    base = baseline_index(records)
    out: dict[str, list[tuple[int, float]]] = {}
    if base is None:
        return out
    for i in range(base + 1, len(records)):
        if records[i].get("phase") == STOP:
            break
        for key, value in per_connection(records, base, i).items():
            out.setdefault(key, []).append((_open(records[i]), value))
    return out


def render_lines(table: Mapping[str, Any]) -> list[str]:
    """The table in plain lines (for `connscale check --measured` and logs)."""
    lines = []
    for row in table.get("rows") or ():
        cells = " / ".join(f"{row[c]:,.0f} B" if row.get(c) is not None else "-" for c in ("opened", "pinging"))
        lines.append(f"{row['what']:<32} {row['kind']:<6} {cells}")
    return lines


def costs_from_table(table: Mapping[str, Any], where: str) -> ConnectionCosts:
    """A run's table as the planning's per-connection costs (after pinging; where the run did not
    measure a figure, this box's bench figure stays). The kernel's is per pair of ends, as a
    `connscale run` on one box measures it."""
    rows = {r["key"]: r.get("pinging") for r in table.get("rows") or () if isinstance(r, Mapping)}
    default = ConnectionCosts()

    def pick(*keys: str, fallback: float) -> float:
        for key in keys:
            value = rows.get(key)
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
        return fallback

    return ConnectionCosts(
        kernel_pair=pick("kernel", fallback=default.kernel_pair),
        user_client=pick("connscale_client_rss", fallback=default.user_client),
        user_server=pick("server_rss", "connscale_server_rss", fallback=default.user_server),
        source=f"the run in {where}",
    )
