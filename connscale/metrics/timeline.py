"""The run recorder: one JSON line per second, flushed as written.

A crash loses at most the line being written; `connscale report` and the run
summary read the same file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator


class Timeline:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "timeline.jsonl"
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if self._file.closed:
            return
        self._file.write(json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


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
