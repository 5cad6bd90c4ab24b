"""The run recorder: one JSON line per second, flushed as written.

A crash loses at most the line being written; `connscale report` and the run
summary read the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from twisted.logger import Logger

log = Logger(namespace="connscale.timeline")


class Timeline:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "timeline.jsonl"
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        #: Lines that could not be written (a full or read-only disk).
        self.lost = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._file.closed:
            return
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
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


def read_timeline(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Records of a timeline; a torn last line (crash mid-write) is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
