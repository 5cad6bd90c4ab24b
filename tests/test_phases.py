"""Phases: the run names them, the controller stamps each timeline second with
one, and percentiles are taken per phase from each second's histogram."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from connscale.control.controller import Controller
from connscale.metrics.histograms import (
    decode_histogram,
    encode_histogram,
    new_histogram,
    rtt_summary_ms,
)
from connscale.metrics.phases import (
    hold_rtt_ms,
    is_hold,
    phase_name_ok,
    phase_table,
    rtt_by_phase,
    window_phase,
)
from connscale.metrics.records import Stats
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.timeline import Timeline, read_timeline
from tests.support.control import SECRET, Link, make_cfg, register, run


def hist_of(*values_us: int) -> str:
    h = new_histogram()
    for v in values_us:
        h.record_value(v)
    return encode_histogram(h)


def test_window_phase_gives_a_changed_second_to_the_moving_side() -> None:
    assert window_phase(["hold:1"]) == "hold:1"
    assert window_phase(["hold:1", "hold:1"]) == "hold:1"
    # The ramp's head and tail never count as holding.
    assert window_phase(["ramp:1", "hold:1"]) == "ramp:1"
    assert window_phase(["hold:1", "ramp:2"]) == "ramp:2"
    assert window_phase(["final_hold", "stop"]) == "stop"
    assert window_phase(["hold:1", "ramp:2", "hold:2"]) == "ramp:2"
    assert window_phase([]) == ""


def test_phase_names_are_bounded() -> None:
    assert phase_name_ok("ramp:12") and phase_name_ok("final_hold") and phase_name_ok("")
    assert not phase_name_ok("x" * 33)
    assert not phase_name_ok("ramp 1") and not phase_name_ok("a\nb") and not phase_name_ok("é")
    assert is_hold("hold:3") and is_hold("final_hold") and is_hold("plateau:2")
    assert not is_hold("ramp:1") and not is_hold("stop") and not is_hold(None) and not is_hold("")


def test_controller_stamps_phase_and_histogram_on_each_second(tmp_path: Path) -> None:
    clock = Clock()
    tl = Timeline(tmp_path)
    controller = Controller(clock, make_cfg(), SECRET, timeline=tl)
    link, mind, _ = register(controller)
    operator_link = Link(controller)  # one avatar per PB connection
    operator = operator_link.login(b"operator")

    assert operator_link.wait(operator.callRemote("set_phase", "ramp:1")) == "ramp:1"
    mind.report["rtt"] = hist_of(1000, 2000, 3000)
    clock.advance(1)
    run(link, controller.tick())               # the whole second was ramp:1
    operator_link.wait(operator.callRemote("set_phase", "hold:1"))
    mind.report["rtt"] = hist_of(500)
    clock.advance(1)
    run(link, controller.tick())               # changed during the second: ramp:1
    mind.report["rtt"] = ""
    clock.advance(1)
    run(link, controller.tick())               # a whole second of hold:1, no pong
    refused = operator_link.wait(operator.callRemote("set_phase", "no spaces please"))
    assert isinstance(refused, Failure) and "phase" in refused.getErrorMessage()
    tl.close()

    records = list(read_timeline(tl.path))
    assert [r.phase for r in records] == ["ramp:1", "ramp:1", "hold:1"]
    first = decode_histogram(records[0].rtt_hist)
    assert first.get_total_count() == 3
    assert rtt_summary_ms(first) == records[0].rtt_window_ms
    assert decode_histogram(records[1].rtt_hist).get_total_count() == 1
    assert records[2].rtt_hist == ""
    assert controller.phase == "hold:1"


def record(phase: str, open_: int, hist: str = "", failures: dict[str, int] | None = None) -> Stats:
    return Stats(elapsed_s=0.0, phase=phase, rtt_hist=hist, client=Snapshot(open=open_, failures=failures or {}),
                 server=Snapshot(open=open_))


def test_per_phase_percentiles_keep_ramps_apart_from_holds() -> None:
    # The case: ramps full of slow connect-time pings, holds fast.
    records = [
        record("ramp:1", 500, hist_of(*[300_000] * 50, *[2_000] * 50)),
        record("hold:1", 1000, hist_of(*[2_000] * 100)),
        record("ramp:2", 1500, hist_of(*[400_000] * 100), {"connect:ECONNRESET": 2}),
        record("final_hold", 2000, hist_of(*[3_000] * 99, 20_000), {"connect:ECONNRESET": 2}),  # cumulative
        record("final_hold", 2000, hist_of(*[3_000] * 100), {"connect:ECONNRESET": 3}),
        record("stop", 0, "", {"connect:ECONNRESET": 3}),
    ]
    table = phase_table(records)
    assert list(table) == ["ramp:1", "hold:1", "ramp:2", "final_hold", "stop"]
    final = table["final_hold"]
    assert final.seconds == 2 and final.open == 2000 and final.rtt_samples == 200
    assert final.failures == 1 and table["ramp:2"].failures == 2
    assert final.rtt_ms.p50 == pytest.approx(3.0, rel=0.01)
    assert final.rtt_ms.p99 == pytest.approx(3.0, rel=0.01)
    assert final.rtt_ms.max == pytest.approx(20.0, rel=0.01)
    assert table["stop"].rtt_ms.p50 is None
    by_phase = rtt_by_phase(records)
    assert by_phase["ramp:2"].p50 == pytest.approx(400.0, rel=0.01)
    holds = hold_rtt_ms(records)
    assert holds.p99 == pytest.approx(3.0, rel=0.01)
    # One cumulative histogram would have said p99 = 400 ms.
    everything = new_histogram()
    for r in records:
        if r.rtt_hist:
            everything.add(decode_histogram(r.rtt_hist))
    assert rtt_summary_ms(everything).p99 == pytest.approx(400.0, rel=0.01)


def test_summary_fields_give_the_final_hold_and_the_run_before_its_stop() -> None:
    from connscale.metrics.phases import summary_fields

    records = [
        record("ramp:1", 500, hist_of(*[300_000] * 10, *[2_000] * 90)),
        record("final_hold", 1000, hist_of(*[3_000] * 100)),
        record("stop", 0, hist_of(*[900_000] * 100)),   # a drain's stragglers: not the run's latency
    ]
    fields = summary_fields(records)
    assert fields.rtt_final_hold_ms.p99 == pytest.approx(3.0, rel=0.01)
    assert fields.rtt_ms.max == pytest.approx(300.0, rel=0.01)   # ramps included, stop not
    assert fields.rtt_by_phase["final_hold"].samples == 100 and fields.rtt_by_phase["stop"].seconds == 1
    assert summary_fields([record("ramp:1", 10, "")]).rtt_final_hold_ms.p50 is None
