"""Per-second series derived from a timeline: rates, percentiles, CPU, memory.

The timeline keeps cumulative counters (a lost second skews nothing); the
report, the CSV export and the live view want what happened *in* each
second. Everything here is a pure function of the records, so a report
re-rendered months later shows the same numbers.
"""

from __future__ import annotations

import csv
from typing import IO, Any, Iterable, Mapping, Sequence

import attrs

from connscale.metrics.histograms import rtt_summary_ms
from connscale.metrics.phases import record_histogram

SIDES = ("server", "client")


def failures_of(record: Mapping[str, Any]) -> dict[str, int]:
    """Cumulative failures of both sides, keyed `phase:cause` (server ones `server:phase:cause`)."""
    out = {str(k): int(v) for k, v in record.get("client", {}).get("failures", {}).items()}
    for key, n in record.get("server", {}).get("failures", {}).items():
        out[f"server:{key}"] = int(n)
    return out


def target_of(record: Mapping[str, Any]) -> int:
    """What was ordered at that second: the sum of every agent's target."""
    return sum(int(c.get("target", 0)) for c in record.get("clients", {}).values())


def workers_of(record: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """(side, label, worker) for every worker in a record; labels use indexes, never pids."""
    out: list[tuple[str, str, Mapping[str, Any]]] = []
    for w in record.get("server_workers", []):
        out.append(("server", f"server #{int(w.get('index', 0)) + 1}", w))
    for name, agent in sorted(record.get("clients", {}).items()):
        for w in agent.get("workers", []):
            out.append(("client", f"{name} #{int(w.get('index', 0)) + 1}", w))
    return out


def _cpu_seconds(worker: Mapping[str, Any]) -> float | None:
    res = worker.get("resources") or {}
    if "cpu_user_s" not in res:
        return None
    return float(res.get("cpu_user_s", 0.0)) + float(res.get("cpu_system_s", 0.0))


def _rate(now: float, before: float, dt: float) -> float:
    # Counters reset when an agent reconnects with fresh workers: never negative.
    return max(0.0, now - before) / dt if dt > 0 else 0.0


@attrs.define
class Series:
    """One list entry per timeline second (rates are per second over the previous one)."""

    elapsed: list[float] = attrs.Factory(list)
    t: list[float] = attrs.Factory(list)
    phase: list[str] = attrs.Factory(list)
    target: list[int] = attrs.Factory(list)
    open: list[int] = attrs.Factory(list)
    server_open: list[int] = attrs.Factory(list)
    ghosts: list[int] = attrs.Factory(list)
    connect_rate: list[float] = attrs.Factory(list)
    ping_rate: list[float] = attrs.Factory(list)
    failure_rate: list[float] = attrs.Factory(list)
    failures_total: list[int] = attrs.Factory(list)
    #: "phase:cause" (client) or "server:phase:cause" -> failures in each second
    failures_by_cause: dict[str, list[int]] = attrs.Factory(dict)
    #: p50/p90/p99/max (ms) of each second's RTTs; None when no pong came back
    rtt: dict[str, list[float | None]] = attrs.Factory(lambda: {k: [] for k in ("p50", "p90", "p99", "max")})
    rtt_count: list[int] = attrs.Factory(list)
    #: p50/p99/max (ms) of each second's TLS handshakes (None when none finished), and their count
    handshake: dict[str, list[float | None]] = attrs.Factory(lambda: {k: [] for k in ("p50", "p99", "max")})
    handshake_count: list[int] = attrs.Factory(list)
    #: per side: CPU of its workers in % of one core, RSS in bytes, and RSS growth per connection added
    #: (bytes) since each worker's first sample
    cpu_pct: dict[str, list[float | None]] = attrs.Factory(lambda: {s: [] for s in SIDES})
    rss: dict[str, list[float]] = attrs.Factory(lambda: {s: [] for s in SIDES})
    mem_per_conn: dict[str, list[float | None]] = attrs.Factory(lambda: {s: [] for s in SIDES})
    #: worker label ("server #1", "local #2") -> open connections / CPU % each second
    worker_open: dict[str, list[int | None]] = attrs.Factory(dict)
    worker_cpu: dict[str, list[float | None]] = attrs.Factory(dict)
    worker_side: dict[str, str] = attrs.Factory(dict)

    def __len__(self) -> int:
        return len(self.elapsed)


def build_series(records: Sequence[Mapping[str, Any]]) -> Series:
    s = Series()
    prev: Mapping[str, Any] | None = None
    prev_failures: dict[str, int] = {}
    prev_cpu: dict[str, tuple[int | None, float]] = {}
    # A worker's RSS and open count when first seen: what a connection adds
    # is (RSS growth) / (connections added) since then, so neither the
    # interpreter itself nor connections opened before the first sample skew it.
    base: dict[tuple[str, int | None], tuple[float, int]] = {}
    for i, r in enumerate(records):
        elapsed = float(r.get("elapsed_s", i))
        dt = elapsed - float(prev.get("elapsed_s", i - 1)) if prev is not None else 0.0
        client, server = r.get("client", {}), r.get("server", {})
        s.elapsed.append(elapsed)
        s.t.append(float(r.get("t", 0.0)))
        s.phase.append(str(r.get("phase") or ""))
        s.target.append(target_of(r))
        s.open.append(int(client.get("open", 0)))
        s.server_open.append(int(server.get("open", 0)))
        s.ghosts.append(int(r.get("ghosts", 0)))
        pc = prev.get("client", {}) if prev is not None else {}
        s.connect_rate.append(_rate(client.get("opened", 0), pc.get("opened", 0), dt) if prev is not None else 0.0)
        s.ping_rate.append(_rate(client.get("pings", 0), pc.get("pings", 0), dt) if prev is not None else 0.0)

        failures = failures_of(r)
        total = sum(failures.values())
        s.failures_total.append(total)
        s.failure_rate.append(_rate(total, sum(prev_failures.values()), dt) if prev is not None else float(total))
        for key in failures.keys() | s.failures_by_cause.keys():
            column = s.failures_by_cause.setdefault(key, [0] * i)
            column.append(max(0, failures.get(key, 0) - prev_failures.get(key, 0)))
        prev_failures = failures

        hist = record_histogram(r)
        if hist is not None:
            pct = rtt_summary_ms(hist)
            count = hist.get_total_count()
        else:
            # Timelines written before `rtt_hist` existed carry the percentiles only.
            pct = dict(r.get("rtt_window_ms") or {})
            count = 0
        for key in s.rtt:
            s.rtt[key].append(pct.get(key))
        s.rtt_count.append(count)
        shake = record_histogram(r, "handshake_hist")
        shake_pct = rtt_summary_ms(shake) if shake is not None else {}
        for key in s.handshake:
            s.handshake[key].append(shake_pct.get(key))
        s.handshake_count.append(shake.get_total_count() if shake is not None else 0)

        cpu = {side: 0.0 for side in SIDES}
        cpu_known = {side: False for side in SIDES}
        rss = {side: 0.0 for side in SIDES}
        grown = {side: 0.0 for side in SIDES}
        added = {side: 0 for side in SIDES}
        seen: set[str] = set()
        for side, label, w in workers_of(r):
            seen.add(label)
            pid = w.get("pid")
            s.worker_side[label] = side
            s.worker_open.setdefault(label, [None] * i).append(int(w.get("open", 0)))
            seconds = _cpu_seconds(w)
            pct_cpu: float | None = None
            if seconds is None:
                # No sample this second: the next one has no base (a rate over
                # one second must come from two consecutive samples).
                prev_cpu.pop(label, None)
            else:
                before = prev_cpu.get(label)
                if before is not None and before[0] == pid and dt > 0:
                    pct_cpu = max(0.0, seconds - before[1]) / dt * 100.0
                    cpu[side] += pct_cpu
                    cpu_known[side] = True
                prev_cpu[label] = (pid, seconds)
            s.worker_cpu.setdefault(label, [None] * i).append(pct_cpu)
            rss_now = float((w.get("resources") or {}).get("rss_bytes", 0.0))
            if rss_now:
                rss0, open0 = base.setdefault((label, pid), (rss_now, int(w.get("open", 0))))
                rss[side] += rss_now
                grown[side] += rss_now - rss0
                added[side] += int(w.get("open", 0)) - open0
        for label in s.worker_open.keys() - seen:
            s.worker_open[label].append(None)
            s.worker_cpu[label].append(None)
            prev_cpu.pop(label, None)
        for side in SIDES:
            s.cpu_pct[side].append(cpu[side] if cpu_known[side] else None)
            s.rss[side].append(rss[side])
            s.mem_per_conn[side].append(grown[side] / added[side] if added[side] > 0 else None)
        prev = r
    return s


def peak_index(s: Series, end: int) -> int | None:
    """The second the clients held the most connections (the first such), up to `end`."""
    if not s.open:
        return None
    return max(range(end + 1), key=lambda i: (s.open[i], -i))


def mem_per_conn_at_peak(s: Series, end: int) -> dict[str, float | None]:
    """User memory per connection per side (workers' RSS growth per connection added) at the peak:
    what one more connection (a TLS one, with TLS on) costs each side."""
    peak = peak_index(s, end)
    return {side: s.mem_per_conn[side][peak] if peak is not None else None for side in SIDES}


CSV_PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_CSV_HEAD = (
    "elapsed_s", "t", "phase", "target", "open", "server_open", "ghosts", "connects_per_s", "pings_per_s",
    "failures_per_s", "rtt_count",
)


def csv_columns(percentiles: Iterable[float] = CSV_PERCENTILES) -> list[str]:
    names = [f"rtt_p{p:g}_ms".replace(".", "_") for p in percentiles]
    return [*_CSV_HEAD, *names, "rtt_max_ms"]


def write_csv(records: Sequence[Mapping[str, Any]], out: IO[str],
              percentiles: Iterable[float] = CSV_PERCENTILES) -> int:
    """Per-second percentiles recomputed from each second's histogram; returns rows written."""
    s = build_series(records)
    writer = csv.writer(out, lineterminator="\n")
    pcts = tuple(percentiles)
    writer.writerow(csv_columns(pcts))
    for i, r in enumerate(records):
        hist = record_histogram(r)
        if hist is not None:
            values = [hist.get_value_at_percentile(p) / 1000.0 for p in pcts] + [hist.get_max_value() / 1000.0]
        else:
            values = [None] * (len(pcts) + 1)
        writer.writerow([
            f"{s.elapsed[i]:.3f}", f"{s.t[i]:.3f}", s.phase[i], s.target[i], s.open[i], s.server_open[i],
            s.ghosts[i], f"{s.connect_rate[i]:.1f}", f"{s.ping_rate[i]:.1f}", f"{s.failure_rate[i]:.1f}",
            s.rtt_count[i], *("" if v is None else f"{v:.3f}" for v in values),
        ])
    return len(records)
