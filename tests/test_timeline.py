"""timeline: one Stats record per line, a torn last line skipped on read (and said)."""

from __future__ import annotations

import json
from pathlib import Path

from connscale.metrics.records import SCHEMA, Stats
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.timeline import Timeline, read_timeline


def line(n: int, **kw: object) -> Stats:
    fields: dict[str, object] = {"client": Snapshot(open=n), "server": Snapshot(open=n), **kw}
    return Stats(elapsed_s=float(n), **fields)  # type: ignore[arg-type]


def test_write_read_round_trip(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "r1"
    tl = Timeline(run)  # creates the run directory
    assert tl.path == run / "timeline.jsonl"
    records = [
        line(10, t=1.5, client=Snapshot(open=10, failures={"connect:EMFILE": 1})),
        line(20, t=2.5, events=("agent a registered",)),
    ]
    for r in records:
        tl.write(r)
    # Line-buffered: a reader sees every record before close (a crash loses nothing written).
    assert list(read_timeline(tl.path)) == records
    tl.close()
    assert list(read_timeline(tl.path)) == records
    lines = tl.path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["schema"] == SCHEMA and lines[0] == records[0].to_json()


def test_write_after_close_is_ignored(tmp_path: Path) -> None:
    tl = Timeline(tmp_path)
    tl.write(line(1))
    tl.close()
    tl.close()  # twice is fine
    tl.write(line(2))
    assert list(read_timeline(tl.path)) == [line(1)]


def test_reopen_appends(tmp_path: Path) -> None:
    a = Timeline(tmp_path)
    a.write(line(1))
    a.close()
    b = Timeline(tmp_path)
    b.write(line(2))
    b.close()
    assert [r.client.open for r in read_timeline(tmp_path / "timeline.jsonl")] == [1, 2]


def test_torn_last_line_is_skipped_and_said(tmp_path: Path) -> None:
    tl = Timeline(tmp_path)
    tl.write(line(1))
    tl.write(line(2))
    tl.close()
    with open(tl.path, "a", encoding="utf-8") as f:
        f.write('{"schema":2,"elapsed_s":3,"client":{"op')  # the crash came mid-write
    problems: list[str] = []
    assert list(read_timeline(tl.path, problems)) == [line(1), line(2)]
    assert len(problems) == 1 and problems[0].startswith("line 3: Stats: not JSON")


def test_a_line_that_is_not_a_record_is_skipped_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text(line(1).to_json() + '\n{"elapsed_s": 2, "client": {"open": -1}, "server": {}}\n[1, 2]\n')
    problems: list[str] = []
    assert list(read_timeline(path, problems)) == [line(1)]
    assert problems == ["line 2: Stats.client: open: must be between 0 and 4611686018427387904, got -1",
                        "line 3: Stats: expected a mapping, got a list"]


def test_blank_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text(line(1).to_json() + "\n\n   \n" + line(2).to_json() + "\n")
    assert list(read_timeline(path)) == [line(1), line(2)]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    path.write_text("")
    assert list(read_timeline(path)) == []
