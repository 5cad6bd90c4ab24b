"""A run directory read as far as it goes: its records, and what it lacks or could not be read.

`connscale report`, `compare`, `runs` and `run --baseline` read run directories that may
be whole, cut short by a crash (a summary never written, a timeline torn mid-line),
copied without some files, or written by an older connscale. Each file is read through
its record (`Summary`, `Stats`); a file that is absent is named in `lacks`, one that
could not be read (or only in part) in `problems`, one line each. Only a path that is
no directory at all is an error: everything else is something to say, never a reason
to stop.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs

from connscale.diagnose.manifest import MANIFEST_FILE, read_manifest
from connscale.diagnose.records import SUMMARY_FILE, Summary, read_summary
from connscale.metrics.records import Stats
from connscale.metrics.timeline import TIMELINE_FILE, read_timeline

CONFIG_FILE = "config.json"


class RunReadError(Exception):
    """The path is no run directory at all; one line."""


@attrs.frozen
class RunFiles:
    dir: Path
    records: list[Stats]
    summary: Summary | None
    manifest: dict[str, Any] | None
    config: dict[str, Any] | None
    #: What could not be read, one line each (a summary cut short, torn timeline lines).
    problems: tuple[str, ...] = ()
    #: The files it does not have (summary.json, timeline.jsonl, manifest.json).
    lacks: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def has_timeline(self) -> bool:
        return TIMELINE_FILE not in self.lacks

    @property
    def started(self) -> float | None:
        """Unix time the run began: its first phase, else its first timeline second."""
        if self.summary is not None and self.summary.phases:
            return self.summary.phases[0].start
        return next((r.t for r in self.records if r.t), None)

    def missing_words(self) -> list[str]:
        """What it lacks and what could not be read, in words (empty: nothing)."""
        return [f"no {name}" for name in self.lacks] + list(self.problems)


def _json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_run(run_dir: str | os.PathLike[str], with_timeline: bool = True) -> RunFiles:
    """Everything a run directory holds that can be read; `with_timeline=False` skips the
    timeline (a listing of many runs needs their summaries only)."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunReadError(f"{path}: no such run directory")
    lacks: list[str] = []
    problems: list[str] = []
    summary, unread = read_summary(path)
    if unread:
        problems.append(unread)
    elif summary is None:
        lacks.append(SUMMARY_FILE)
    records: list[Stats] = []
    timeline = path / TIMELINE_FILE
    if not timeline.exists():
        lacks.append(TIMELINE_FILE)
    elif with_timeline:
        torn: list[str] = []
        try:
            records = list(read_timeline(timeline, torn))
        except OSError as e:
            problems.append(f"{TIMELINE_FILE}: {e.strerror or e}")
        if torn:
            problems.append(f"{TIMELINE_FILE}: {len(torn)} line{'s' if len(torn) > 1 else ''} skipped ({torn[0]})")
    manifest = read_manifest(path)
    if manifest is None:
        if (path / MANIFEST_FILE).exists():
            problems.append(f"{MANIFEST_FILE}: not a JSON object")
        else:
            lacks.append(MANIFEST_FILE)
    return RunFiles(path, records, summary, manifest, _json(path / CONFIG_FILE), tuple(problems), tuple(lacks))
