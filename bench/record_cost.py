#!/usr/bin/env python3
"""What writing one timeline line costs the hub: `Collector.record` at a million's shape.

At a million connections the hub writes a line every second with ~106 worker rows
(53 server workers, 53 client workers on one agent). This builds that state in one
process (a real `Collector`, `Registry`, `Diagnosis` and `Timeline` in a temporary
directory; the server supervisor and the agent are stand-ins that answer with rows
shaped like real ones) and times `Collector.record()` (the stats record, the
incident detector's judgement, the JSON line written and flushed) over --lines
lines, reporting the median and the 90th percentile in ms and the line's size,
and what reading such a line back into its record costs.

    python3 bench/record_cost.py                      # 53 + 53 workers, 300 lines
    python3 bench/record_cost.py --workers 100 --lines 500
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from connscale.records.packed import pack_pieces
from connscale.config.loader import parse_config
from connscale.control.collect import Collector, EventLog
from connscale.control.diagnosis import Diagnosis
from connscale.control.records import AgentInfo, AgentReport
from connscale.control.registry import Registry
from connscale.metrics.histograms import encode_histogram, new_histogram
from connscale.metrics.snapshot import Snapshot, sum_snapshots
from connscale.metrics.timeline import Timeline
from connscale.procs.records import WorkerRow


def row(index: int, open_: int, t: float) -> WorkerRow:
    return WorkerRow(index=index, pid=1000 + index, alive=True, target=open_, open=open_, budget=19900,
                     resources={"cpu_user_s": 12.5 + t, "cpu_system_s": 3.25 + t / 2, "rss_bytes": 31e6,
                                "threads": 1.0},
                     load={"cpu": 0.41, "lag_ms_max": 12.5, "lag_ms_mean": 3.1, "nofile": 20000}, silent_s=0.2)


class Servers:
    """The hub's supervisor as the collector sees it: totals, rows, no losses."""

    def __init__(self, workers: int, per_worker: int) -> None:
        self.slots = [None] * workers
        self.per_worker = per_worker
        self.lost_workers = 0
        self.t = 0.0

    def totals(self) -> Snapshot:
        n = self.per_worker
        return sum_snapshots(Snapshot(open=n, opened=n, pings=n * 10, pongs=n * 10) for _ in self.slots)

    def workers(self) -> list[WorkerRow]:
        return [row(i, self.per_worker, self.t) for i in range(len(self.slots))]

    def take_losses(self) -> list[Any]:
        return []

    def take_events(self) -> list[str]:
        return []

    def poll(self, wait: float = 0.0, fresh: float = 0.0) -> defer.Deferred[None]:
        return defer.succeed(None)


class Mind:
    def __init__(self, report: dict[str, Any]) -> None:
        self.report = pack_pieces(report)  # as an agent answers report_packed

    def callRemote(self, method: str, *args: Any) -> defer.Deferred[Any]:
        return defer.succeed(self.report if method == "report_packed" else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=53, help="workers per side (default 53)")
    p.add_argument("--lines", type=int, default=300, help="lines to time (default 300)")
    args = p.parse_args()
    per_worker = 1_000_000 // (2 * args.workers)
    clock = Clock()
    clock.advance(1_800_000_000)
    events = EventLog()
    registry = Registry(clock, events.note)
    cfg = parse_config({"control": {"secret": "x" * 16}})
    hist = new_histogram()
    for v in range(200, 40_000, 37):
        hist.record_value(v, 3)
    rtt = encode_histogram(hist)
    rows = tuple(row(i, per_worker, 0.0) for i in range(args.workers))
    total = args.workers * per_worker
    report = AgentReport(totals=Snapshot(open=total, opened=total, pings=total * 10, pongs=total * 10), rtt=rtt,
                         workers=rows).to_wire()
    info = AgentInfo.from_wire({"host": "loadgen", "pid": 4242, "budget": 19900})
    agent, _ = registry.register("local", Mind(report), info)
    agent.worker_targets = [per_worker] * args.workers
    servers = Servers(args.workers, per_worker)
    with tempfile.TemporaryDirectory() as tmp:
        timeline = Timeline(tmp)
        diagnosis = Diagnosis(cfg, registry, events.note)
        collector = Collector(clock, registry, events, servers, timeline, diagnosis=diagnosis)  # type: ignore[arg-type]
        took = []
        for i in range(args.lines):
            clock.advance(1.0)
            servers.t = float(i)
            collector.poll()
            collector.client_rtt.add(rtt)
            t0 = time.perf_counter()
            collector.record(time.time(), clock.seconds())
            took.append((time.perf_counter() - t0) * 1000)
        timeline.close()
        size = timeline.path.stat().st_size / args.lines
        last = timeline.path.read_text().splitlines()[-1]
    took.sort()
    print(f"Collector.record with {2 * args.workers} worker rows, {args.lines} lines: "
          f"median {statistics.median(took):.2f} ms, p90 {took[int(0.9 * len(took))]:.2f} ms, "
          f"line {size:,.0f} bytes")
    read = reading_cost(last)
    if read is not None:
        print(f"reading one such line back (Stats.from_json, as `connscale run` and `ctl watch` read "
              f"stats_packed): median {read:.2f} ms")


def reading_cost(line: str, times: int = 200) -> float | None:
    try:
        from connscale.metrics.records import Stats
    except ImportError:  # a connscale from before the typed records
        return None
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        Stats.from_json(line)
        took.append((time.perf_counter() - t0) * 1000)
    return statistics.median(took)


if __name__ == "__main__":
    main()
