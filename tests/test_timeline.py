"""timeline: one JSON record per line, a torn last line skipped on read."""

from __future__ import annotations

import json
from pathlib import Path

from connscale.metrics.timeline import Timeline, read_timeline


def test_write_read_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    tl = Timeline(run)  # creates the run directory
    assert tl.path == run / "timeline.jsonl"
    records = [
        {"t": 1.5, "client": {"open": 10, "failures": {"connect:EMFILE": 1}}, "events": []},
        {"t": 2.5, "client": {"open": 20}, "events": ["agent a registered"], "rtt_ms": {"p50": None}},
    ]
    for r in records:
        tl.write(r)
    # Line-buffered: a reader sees every record before close (a crash loses nothing written).
    assert list(read_timeline(tl.path)) == records
    tl.close()
    assert list(read_timeline(tl.path)) == records
    lines = tl.path.read_text().splitlines()
    assert len(lines) == 2
    assert lines[0] == json.dumps(records[0], separators=(",", ":"), sort_keys=True)


def test_write_after_close_is_ignored(tmp_path: Path) -> None:
    tl = Timeline(tmp_path)
    tl.write({"n": 1})
    tl.close()
    tl.close()  # twice is fine
    tl.write({"n": 2})
    assert list(read_timeline(tl.path)) == [{"n": 1}]


def test_reopen_appends(tmp_path: Path) -> None:
    a = Timeline(tmp_path)
    a.write({"n": 1})
    a.close()
    b = Timeline(tmp_path)
    b.write({"n": 2})
    b.close()
    assert [r["n"] for r in read_timeline(tmp_path / "timeline.jsonl")] == [1, 2]


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    tl = Timeline(tmp_path)
    tl.write({"n": 1})
    tl.write({"n": 2})
    tl.close()
    with open(tl.path, "a", encoding="utf-8") as f:
        f.write('{"n":3,"client":{"op')  # the crash came mid-write
    assert list(read_timeline(tl.path)) == [{"n": 1}, {"n": 2}]


def test_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text('{"n":1}\n\n   \n{"n":2}\n')
    assert list(read_timeline(path)) == [{"n": 1}, {"n": 2}]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text("")
    assert list(read_timeline(path)) == []
