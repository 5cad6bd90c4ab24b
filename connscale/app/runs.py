"""`connscale runs [DIR]`: the run directories under DIR as a table, newest first.

One row per directory that holds a run's files (summary.json, timeline.jsonl or
manifest.json): when it started, its verdict, target, held, the hold's p99, a search's
capacity, its duration, whether its gates passed. Read from the summaries (fast for a
hundred runs); a run that left no summary is read from its timeline, and says so.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from connscale.app.startup import EXIT_OK, EXIT_USAGE
from connscale.diagnose.compare import started_text
from connscale.diagnose.headline import BY_NAME, RunView, measure
from connscale.diagnose.manifest import MANIFEST_FILE
from connscale.diagnose.records import SUMMARY_FILE
from connscale.diagnose.runfiles import RunFiles, read_run
from connscale.metrics.render import format_table
from connscale.metrics.timeline import TIMELINE_FILE

COLUMNS = ("when", "run", "verdict", "target", "held", "hold_p99_ms", "capacity", "duration_s", "gate")


def run_dirs(parent: Path) -> list[Path]:
    marks = (SUMMARY_FILE, TIMELINE_FILE, MANIFEST_FILE)
    return [d for d in parent.iterdir() if d.is_dir() and any((d / m).exists() for m in marks)]


@attrs.frozen
class RunRow:
    """One run of the listing (`--json` prints these, with their fields' names)."""

    dir: str
    run: str
    started: float | None
    verdict: str
    target: int | None
    held: float | None
    hold_p99_ms: float | None
    capacity: float | None
    duration_s: float | None
    gate: str
    lacks: tuple[str, ...]

    @classmethod
    def of(cls, run: RunFiles) -> RunRow:
        s = run.summary
        measured = measure(RunView(s, run.records))
        gate = ""
        if s is not None and (s.thresholds or s.baseline is not None):
            gate = "passed" if s.gate_passed else "FAILED"
        return cls(dir=str(run.dir), run=run.name, started=run.started,
                   verdict=s.verdict if s is not None else "(no summary)",
                   target=s.target if s is not None else None, held=measured.get("held"),
                   hold_p99_ms=measured.get("hold_p99_ms"), capacity=measured.get("search.capacity"),
                   duration_s=s.duration_s if s is not None else None, gate=gate, lacks=tuple(run.missing_words()))

    def shown(self) -> dict[str, str]:
        """The table's cells, each number as the registry writes it."""
        def metric(name: str, value: float | None) -> str:
            return BY_NAME[name].format(value, symbol=False)
        return {
            "when": started_text(self.started), "run": self.run, "verdict": self.verdict,
            "target": metric("held", self.target), "held": metric("held", self.held),
            "hold_p99_ms": metric("hold_p99_ms", self.hold_p99_ms),
            "capacity": metric("search.capacity", self.capacity),
            "duration_s": "-" if self.duration_s is None else f"{self.duration_s:.0f}", "gate": self.gate,
        }


def list_runs(parent: Path) -> list[RunRow]:
    rows = []
    for d in run_dirs(parent):
        run = read_run(d, with_timeline=False)
        if run.summary is None and run.has_timeline:
            run = read_run(d)  # a run that crashed: its timeline says how far it got
        rows.append((run.started or d.stat().st_mtime, RunRow.of(run)))
    return [row for _, row in sorted(rows, key=lambda r: r[0], reverse=True)]


def runs_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="connscale runs", description="The run directories under DIR, newest first.")
    p.add_argument("dir", nargs="?", default="runs", help="the parent of the run directories (default: ./runs)")
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    args = p.parse_args(argv)
    parent = Path(args.dir)
    if not parent.is_dir():
        sys.stderr.write(f"connscale runs: {parent}: no such directory\n")
        return EXIT_USAGE
    rows = list_runs(parent)
    if args.json:
        print(json.dumps([attrs.asdict(r) for r in rows], indent=2))
        return EXIT_OK
    print(format_table([r.shown() for r in rows], COLUMNS, empty=f"no run directories in {parent}",
                       right=("target", "held", "hold_p99_ms", "capacity", "duration_s")))
    for row in rows:
        if row.lacks:
            print(f"{row.run}: {'; '.join(row.lacks)}")
    return EXIT_OK
