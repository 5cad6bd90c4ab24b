"""Per-second series derived from a timeline: rates, percentiles, CPU, memory.

The timeline keeps cumulative counters (a lost second skews nothing); the
report, the CSV export and the live view want what happened *in* each
second. Everything here is a pure function of the records, so a report
re-rendered months later shows the same numbers.
"""

from __future__ import annotations

import csv
from typing import IO, Iterable, Sequence

import attrs

from connscale.metrics.histograms import Percentiles, rtt_summary_ms
from connscale.metrics.phases import STOP
from connscale.metrics.records import Stats
from connscale.metrics.workers import WorkerRef

SIDES = ("server", "client")


def _rate(now: float, before: float, dt: float) -> float:
    # Counters reset when an agent reconnects with fresh workers: never negative.
    return max(0.0, now - before) / dt if dt > 0 else 0.0


@attrs.define
class RttSeries:
    """p50/p90/p99/max (ms) of each second's RTTs; None in a second no pong came back."""

    p50: list[float | None] = attrs.Factory(list)
    p90: list[float | None] = attrs.Factory(list)
    p99: list[float | None] = attrs.Factory(list)
    max: list[float | None] = attrs.Factory(list)

    def append(self, pct: Percentiles) -> None:
        self.p50.append(pct.p50)
        self.p90.append(pct.p90)
        self.p99.append(pct.p99)
        self.max.append(pct.max)


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
    rtt: RttSeries = attrs.Factory(RttSeries)
    rtt_count: list[int] = attrs.Factory(list)
    #: p50/p90/p99/max (ms) of each second's TLS handshakes (None when none finished), and their count
    handshake: RttSeries = attrs.Factory(RttSeries)
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


@attrs.define
class _SideSums:
    """One side's workers added up over one second."""

    cpu: float = 0.0
    cpu_known: bool = False
    rss: float = 0.0
    grown: float = 0.0
    added: int = 0


@attrs.define
class _SeriesBuilder:
    """Adds one timeline record after another to a `Series`, keeping what a rate needs of the one before."""

    series: Series = attrs.Factory(Series)
    prev: Stats | None = None
    prev_failures: dict[str, int] = attrs.Factory(dict)
    #: worker label -> (its pid, its CPU seconds) at its last sample
    prev_cpu: dict[str, tuple[int | None, float]] = attrs.Factory(dict)
    # A worker's RSS and open count when first seen: what a connection adds
    # is (RSS growth) / (connections added) since then, so neither the
    # interpreter itself nor connections opened before the first sample skew it.
    base: dict[tuple[str, int | None], tuple[float, int]] = attrs.Factory(dict)

    def add(self, i: int, r: Stats) -> None:
        """Record `r`, the `i`th of the timeline."""
        prev = self.prev
        dt = r.elapsed_s - prev.elapsed_s if prev is not None else 0.0
        self._counts(r, dt)
        self._failures(i, r, dt)
        self._latencies(r)
        self._workers(i, r, dt)
        self.prev = r

    def _counts(self, r: Stats, dt: float) -> None:
        s, prev = self.series, self.prev
        s.elapsed.append(r.elapsed_s)
        s.t.append(r.t or 0.0)
        s.phase.append(r.phase)
        s.target.append(r.target)
        s.open.append(r.client.open)
        s.server_open.append(r.server.open)
        s.ghosts.append(r.ghosts)
        s.connect_rate.append(_rate(r.client.opened, prev.client.opened, dt) if prev is not None else 0.0)
        s.ping_rate.append(_rate(r.client.pings, prev.client.pings, dt) if prev is not None else 0.0)

    def _failures(self, i: int, r: Stats, dt: float) -> None:
        s, prev_failures = self.series, self.prev_failures
        failures = r.failures()
        total = sum(failures.values())
        s.failures_total.append(total)
        s.failure_rate.append(_rate(total, sum(prev_failures.values()), dt) if self.prev is not None
                              else float(total))
        for key in failures.keys() | s.failures_by_cause.keys():
            column = s.failures_by_cause.setdefault(key, [0] * i)
            column.append(max(0, failures.get(key, 0) - prev_failures.get(key, 0)))
        self.prev_failures = failures

    def _latencies(self, r: Stats) -> None:
        s = self.series
        hist = r.histogram()
        if hist is not None:
            pct = rtt_summary_ms(hist)
            count = hist.get_total_count()
        else:
            # Timelines written before `rtt_hist` existed carry the percentiles only.
            pct = r.rtt_window_ms or Percentiles()
            count = 0
        s.rtt.append(pct)
        s.rtt_count.append(count)
        shake = r.handshake_histogram()
        s.handshake.append(rtt_summary_ms(shake) if shake is not None else Percentiles())
        s.handshake_count.append(shake.get_total_count() if shake is not None else 0)

    def _workers(self, i: int, r: Stats, dt: float) -> None:
        s = self.series
        sums = {side: _SideSums() for side in SIDES}
        seen: set[str] = set()
        for ref in r.worker_rows():
            seen.add(ref.label)
            self._worker(i, ref, dt, sums[ref.side])
        for label in s.worker_open.keys() - seen:
            s.worker_open[label].append(None)
            s.worker_cpu[label].append(None)
            self.prev_cpu.pop(label, None)
        for side, sum_ in sums.items():
            s.cpu_pct[side].append(sum_.cpu if sum_.cpu_known else None)
            s.rss[side].append(sum_.rss)
            s.mem_per_conn[side].append(sum_.grown / sum_.added if sum_.added > 0 else None)

    def _worker(self, i: int, ref: WorkerRef, dt: float, sums: _SideSums) -> None:
        s, label, w = self.series, ref.label, ref.row
        s.worker_side[label] = ref.side
        s.worker_open.setdefault(label, [None] * i).append(w.open)
        s.worker_cpu.setdefault(label, [None] * i).append(self._cpu_pct(label, w.pid, w.cpu_s, dt, sums))
        rss_now = w.rss_bytes or 0.0
        if rss_now:
            rss0, open0 = self.base.setdefault((label, w.pid), (rss_now, w.open))
            sums.rss += rss_now
            sums.grown += rss_now - rss0
            sums.added += w.open - open0

    def _cpu_pct(self, label: str, pid: int | None, seconds: float | None, dt: float,
                 sums: _SideSums) -> float | None:
        """A worker's CPU in % of a core over the last second (None without two samples of one pid)."""
        if seconds is None:
            # No sample this second: the next one has no base (a rate over
            # one second must come from two consecutive samples).
            self.prev_cpu.pop(label, None)
            return None
        pct_cpu: float | None = None
        before = self.prev_cpu.get(label)
        if before is not None and before[0] == pid and dt > 0:
            pct_cpu = max(0.0, seconds - before[1]) / dt * 100.0
            sums.cpu += pct_cpu
            sums.cpu_known = True
        self.prev_cpu[label] = (pid, seconds)
        return pct_cpu


def build_series(records: Sequence[Stats]) -> Series:
    builder = _SeriesBuilder()
    for i, r in enumerate(records):
        builder.add(i, r)
    return builder.series


def run_end(records: Sequence[Stats]) -> int:
    """Index of the run's last second before it began to stop.

    Stopping drains connections and ends workers: what happens then (a
    server worker gone before its clients, pings unanswered) is not what
    the run measured, so "at the end" means before the `stop` phase.
    """
    for i in range(len(records) - 1, -1, -1):
        if records[i].phase != STOP:
            return i
    return len(records) - 1


def peak_index(s: Series, end: int) -> int | None:
    """The first second up to `end` with the most connections open (None: no seconds)."""
    if not s.open:
        return None
    return max(range(end + 1), key=lambda i: (s.open[i], -i))


def mem_per_conn_at_peak(s: Series, end: int) -> tuple[float | None, float | None]:
    """(server, client): each side's workers' RSS growth per connection added since their first
    sample, at the peak. What the report showed before the memory table (`diagnose.memory`,
    the figure's owner) existed: only a run directory without that table falls back to it."""
    peak = peak_index(s, end)
    server, client = (s.mem_per_conn[side][peak] if peak is not None else None for side in SIDES)
    return server, client


CSV_PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_CSV_HEAD = (
    "elapsed_s", "t", "phase", "target", "open", "server_open", "ghosts", "connects_per_s", "pings_per_s",
    "failures_per_s", "rtt_count",
)


def csv_columns(percentiles: Iterable[float] = CSV_PERCENTILES) -> list[str]:
    names = [f"rtt_p{p:g}_ms".replace(".", "_") for p in percentiles]
    return [*_CSV_HEAD, *names, "rtt_max_ms"]


def write_csv(records: Sequence[Stats], out: IO[str],
              percentiles: Iterable[float] = CSV_PERCENTILES) -> int:
    """Per-second percentiles recomputed from each second's histogram; returns rows written."""
    s = build_series(records)
    writer = csv.writer(out, lineterminator="\n")
    pcts = tuple(percentiles)
    writer.writerow(csv_columns(pcts))
    for i, r in enumerate(records):
        hist = r.histogram()
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
