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

from collections.abc import Sequence

from connscale.diagnose.costs import ConnectionCosts
from connscale.diagnose.records import MemoryMoment, MemoryRow, MemoryServer, MemoryTable
from connscale.host.observed import HostRow, TargetRow
from connscale.metrics.phases import FINAL_HOLD, STOP
from connscale.metrics.records import Stats

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
#: The two moments measured, in the order shown.
MOMENTS = ("opened", "pinging")


def observed(record: Stats) -> tuple[TargetRow | None, HostRow | None]:
    """The first observer's first target and its host."""
    for row in record.observers.values():
        if row.targets:
            return row.targets[0], row.host or HostRow()
    return None, None


def levels(record: Stats) -> dict[str, float]:
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
    for side, key in (("server", "connscale_server_rss"), ("client", "connscale_client_rss")):
        rows = [w.row for w in record.worker_rows() if w.side == side and w.row.alive]
        if rows:
            out[key] = float(sum(row.rss_bytes or 0 for row in rows))
    return out


def baseline_index(records: Sequence[Stats]) -> int | None:
    """The last second before the first connection opened that the observer read."""
    best = None
    for i, r in enumerate(records):
        if r.client.open > 0:
            break
        if observed(r)[0] is not None:
            best = i
    return best


def _moments(records: Sequence[Stats]) -> tuple[int | None, int | None]:
    """Indexes of the "opened" second (the first at the peak count, before the final hold) and
    the "pinging" one (the last of the final hold, else the last before the stop)."""
    live = [i for i, r in enumerate(records) if r.phase != STOP]
    if not live:
        return None, None
    peak = max(records[i].client.open for i in live)
    reached = [i for i in live if records[i].client.open >= peak and peak > 0]
    final = [i for i in live if records[i].phase == FINAL_HOLD]
    return (reached[0] if reached else None), (final[-1] if final else live[-1])


def per_connection(records: Sequence[Stats], base: int, at: int) -> dict[str, float]:
    """Bytes per connection of each quantity from `base` to `at`."""
    added = records[at].client.open - records[base].client.open
    if added <= 0:
        return {}
    b, a = levels(records[base]), levels(records[at])
    return {k: (a[k] - b[k]) / added for k in a if k in b}


def memory_table(records: Sequence[Stats]) -> MemoryTable | None:
    """The table for summary.json and the report; None without an observed baseline."""
    base = baseline_index(records)
    if base is None:
        return None
    opened, pinging = _moments(records)
    columns = [per_connection(records, base, i) if i is not None else {} for i in (opened, pinging)]
    rows = []
    for key, what, kind, side in QUANTITIES:
        # Unrounded: the report rounds once, as it shows them.
        if any(key in col for col in columns):
            rows.append(MemoryRow(key, what, kind, side, *(col.get(key) for col in columns)))
    if not rows:
        return None
    target, host = observed(records[pinging if pinging is not None else base])

    def moment(i: int | None) -> MemoryMoment | None:
        return None if i is None else MemoryMoment(records[i].elapsed_s, records[i].client.open, records[i].phase)

    return MemoryTable(
        baseline=MemoryMoment(records[base].elapsed_s, records[base].client.open),
        opened=moment(opened), pinging=moment(pinging),
        server=MemoryServer(target.label, target.pid) if target is not None else None,
        host=host.hostname if host is not None else "",
        rows=tuple(rows),
    )


def per_second(records: Sequence[Stats]) -> dict[str, list[tuple[int, float]]]:
    """quantity -> (open, bytes per connection since the baseline) for every second after it: the
    report plots each against open connections."""
    base = baseline_index(records)
    out: dict[str, list[tuple[int, float]]] = {}
    if base is None:
        return out
    for i in range(base + 1, len(records)):
        if records[i].phase == STOP:
            break
        for key, value in per_connection(records, base, i).items():
            out.setdefault(key, []).append((records[i].client.open, value))
    return out


def render_lines(table: MemoryTable) -> list[str]:
    """The table in plain lines (for `connscale check --measured` and logs)."""
    lines = []
    for row in table.rows:
        cells = " / ".join(f"{v:,.0f} B" if v is not None else "-" for v in (row.opened, row.pinging))
        lines.append(f"{row.what:<32} {row.kind:<6} {cells}")
    return lines


def costs_from_table(table: MemoryTable, where: str) -> ConnectionCosts:
    """A run's table as the planning's per-connection costs (after pinging; where the run did not
    measure a figure, this box's bench figure stays). The kernel's is per pair of ends, as a
    `connscale run` on one box measures it."""
    rows = {r.key: r.pinging for r in table.rows}
    default = ConnectionCosts()

    def pick(*keys: str, fallback: float) -> float:
        for key in keys:
            value = rows.get(key)
            if value is not None and value > 0:
                return float(value)
        return fallback

    return ConnectionCosts(
        kernel_pair=pick("kernel", fallback=default.kernel_pair),
        user_client=pick("connscale_client_rss", fallback=default.user_client),
        user_server=pick("server_rss", "connscale_server_rss", fallback=default.user_server),
        source=f"the run in {where}",
    )
