"""status: the periodic status line, driven by a fake clock."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from connscale.metrics.counters import Counters
from connscale.metrics.status import StatusService, parse_status


def make(with_rtt: bool = True, interval: float = 5.0):  # type: ignore[no-untyped-def]
    clock = Clock()
    counters = Counters()
    lines: list[str] = []
    service = StatusService(clock, interval, counters.snapshot, with_rtt=with_rtt, emit=lines.append)
    return clock, counters, lines, service


def test_a_line_every_interval_and_a_last_one_on_stop() -> None:
    clock, counters, lines, service = make()
    service.startService()
    assert lines == []  # not at start: nothing has happened yet
    clock.advance(4.9)
    assert lines == []
    clock.advance(0.1)
    assert len(lines) == 1
    counters.open = counters.opened = 7
    clock.advance(5.0)
    clock.advance(5.0)
    assert len(lines) == 3
    assert parse_status(lines[1])["open"] == "7"
    service.stopService()
    assert len(lines) == 4
    assert service.last_line == lines[-1]
    clock.advance(60)
    assert len(lines) == 4  # the loop is gone
    assert not clock.getDelayedCalls()


def test_rtt_covers_the_interval_only() -> None:
    clock, counters, lines, service = make()
    service.startService()
    counters.rtt.record(2000)
    clock.advance(5)
    first = parse_status(lines[-1])
    assert float(first["rtt_p50_ms"]) == pytest.approx(2.0, rel=0.02)
    clock.advance(5)
    second = parse_status(lines[-1])
    assert second["rtt_p50_ms"] == "-" and second["rtt_p99_ms"] == "-"
    counters.rtt.record(40_000)
    clock.advance(5)
    assert float(parse_status(lines[-1])["rtt_p99_ms"]) == pytest.approx(40.0, rel=0.02)
    # The cumulative view keeps everything.
    assert service.rtt.total.get_total_count() == 2
    service.stopService()


def test_server_lines_have_no_rtt_keys() -> None:
    clock, counters, lines, service = make(with_rtt=False, interval=1.0)
    service.startService()
    counters.violation("flood")
    clock.advance(1.0)
    fields = parse_status(lines[-1])
    assert list(fields) == ["open", "opened", "closed", "pings", "pongs", "failures",
                            "fail.steady.protocol_error", "proto.flood"]
    service.stopService()


def test_keys_and_values() -> None:
    clock, counters, lines, service = make()
    counters.open, counters.opened, counters.closed, counters.pings, counters.pongs = 1, 2, 1, 30, 29
    counters.fail("connect", "EMFILE")
    service.startService()
    clock.advance(5)
    assert lines[-1].startswith("open=1 opened=2 closed=1 pings=30 pongs=29 rtt_p50_ms=- rtt_p99_ms=- failures=1 ")
    assert lines[-1].endswith(" fail.connect.EMFILE=1")
    service.stopService()


def test_tick_returns_the_line() -> None:
    _, _, lines, service = make()
    line = service.tick()
    assert lines == [line] and service.last_line == line


def test_default_emit_logs() -> None:
    from twisted.logger import globalLogPublisher

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        service = StatusService(Clock(), 1.0, Counters().snapshot, with_rtt=False)
        service.tick()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert any(e.get("status", "").startswith("open=0 ") for e in seen)
