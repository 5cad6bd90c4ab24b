"""The run recorder: one `Stats` record a line, as JSON, flushed as written.

A crash loses at most the line being written; `connscale report`, the run's
summary, the search and the benchmarks read the same file through `read_timeline`,
the one reader: each line is checked against its record (`metrics.records.Stats`),
so every reader gets fields, never keys. A line that does not fit (torn by a
crash mid-write, or damaged) is skipped, and said: `problems` collects one line
per skipped line for a caller that reports what a run directory lacks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from twisted.logger import Logger

from connscale.records.base import RecordError
from connscale.metrics.records import Stats

log = Logger(namespace="connscale.timeline")

TIMELINE_FILE = "timeline.jsonl"


class Timeline:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / TIMELINE_FILE
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        #: Lines that could not be written (a full or read-only disk).
        self.lost = 0

    def write(self, record: Stats) -> None:
        if self._file.closed:
            return
        line = record.to_json() + "\n"
        try:
            self._file.write(line)
            self._file.flush()
        except OSError as e:
            # The measurement goes on; the run's summary says what was lost.
            if not self.lost:
                log.error("cannot write {path}: {why}; the timeline is incomplete from here",
                          path=str(self.path), why=e.strerror or str(e))
            self.lost += 1

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._file.close()
            except OSError:
                self.lost += 1  # the buffered rest of the last line


def read_timeline(path: str | os.PathLike[str], problems: list[str] | None = None) -> Iterator[Stats]:
    """The records of a timeline, in order; a line that is not one is skipped (and, with
    `problems`, described there: "line 7: Stats.client: missing")."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                yield Stats.from_json(line)
            except RecordError as e:
                if problems is not None:
                    problems.append(f"line {number}: {e}")
