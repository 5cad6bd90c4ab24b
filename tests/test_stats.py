"""stats: failure taxonomy, counters, snapshots, RTT views and status lines."""

from __future__ import annotations

import errno
import json
import re

import pytest
from twisted.internet import error as terror
from twisted.python.failure import Failure

from connscale.metrics.counters import (
    APP_CAUSES,
    PHASES,
    Counters,
    classify,
    errno_cause,
)
from connscale.metrics.histograms import (
    Percentiles,
    RttAccumulator,
    decode_histogram,
    encode_histogram,
    new_histogram,
    rtt_summary_ms,
)
from connscale.metrics.snapshot import Snapshot, sum_snapshots
from connscale.metrics.status import format_status, parse_status, status_fields

ADDR = "203.0.113.77:8989"


def in_vocabulary(cause: str) -> bool:
    return cause in APP_CAUSES or cause in errno.errorcode.values() or re.fullmatch(r"ERRNO_-?\d+", cause) is not None


# ---------------------------------------------------------------- classify


@pytest.mark.parametrize(
    "exc, cause",
    [
        (terror.ConnectionRefusedError(f"connection to {ADDR} refused"), "ECONNREFUSED"),
        (terror.getConnectError((errno.ECONNREFUSED, "Connection refused")), "ECONNREFUSED"),
        (terror.ConnectBindError(99, f"Cannot assign requested address {ADDR}"), "EADDRNOTAVAIL"),
        (terror.ConnectError(osError=24, string=f"too many open files near {ADDR}"), "EMFILE"),
        (terror.TCPTimedOutError(), "ETIMEDOUT"),
        (terror.getConnectError((errno.ETIMEDOUT, "Connection timed out")), "ETIMEDOUT"),
        (terror.TimeoutError(f"User timeout caused connection failure to {ADDR}"), "ETIMEDOUT"),
        (terror.getConnectError((errno.ENETUNREACH, "Network is unreachable")), "ENETUNREACH"),
        (terror.getConnectError((errno.EHOSTUNREACH, "No route to host")), "EHOSTUNREACH"),
        (terror.ConnectError(string=f"something odd with {ADDR}"), "unknown"),
        (terror.ConnectionDone(f"closed by {ADDR}"), "closed_by_peer"),
        (terror.ConnectionLost(f"lost {ADDR}"), "ECONNRESET"),
        (OSError(errno.ENFILE, f"File table overflow {ADDR}"), "ENFILE"),
        (OSError(errno.EMFILE, "Too many open files"), "EMFILE"),
        (ConnectionResetError(errno.ECONNRESET, ADDR), "ECONNRESET"),
        (OSError(9999, f"what is this {ADDR}"), "ERRNO_9999"),
        (OSError(f"no errno {ADDR}"), "unknown"),
        (TimeoutError(f"timed out {ADDR}"), "unknown"),
        (ValueError(f"random {ADDR}"), "unknown"),
        (RuntimeError(), "unknown"),
        (KeyError(ADDR), "unknown"),
    ],
)
def test_classify(exc: BaseException, cause: str) -> None:
    assert classify(exc) == cause
    assert classify(Failure(exc)) == cause
    # Never a message: nothing of the address or port leaks into the class.
    assert ":" not in cause and "203" not in cause and "8989" not in cause and "77" not in cause
    assert in_vocabulary(cause)


def test_errno_cause() -> None:
    assert errno_cause(errno.ECONNREFUSED) == "ECONNREFUSED"
    assert errno_cause(99) == "EADDRNOTAVAIL"
    assert errno_cause(24) == "EMFILE"
    assert errno_cause(9999) == "ERRNO_9999"


def test_vocabulary_is_bounded() -> None:
    assert PHASES == ("connect", "first_ping", "steady")
    assert {"no_answer_from_server", "closed_by_peer", "protocol_error", "worker_lost", "unknown"} <= APP_CAUSES
    # "stopped" is not a failure; it must never be counted as one.
    assert "stopped" not in APP_CAUSES


# ---------------------------------------------------------------- counters and snapshots


def rtt_count(encoded: str) -> int:
    """How many RTTs a worker's snapshot carries (as its parent counts them)."""
    acc = RttAccumulator()
    acc.add(encoded)
    return acc.take_window().get_total_count()


def filled_counters() -> Counters:
    c = Counters()
    c.open, c.opened, c.closed, c.pings, c.pongs, c.skipped = 3, 10, 7, 100, 98, 2
    c.fail("connect", "ECONNREFUSED")
    c.fail("connect", "ECONNREFUSED")
    c.fail("steady", "no_answer_from_server")
    c.violation("flood")
    for us in (1000, 2000, 3000):
        c.rtt.record(us)
    return c


def test_counters_fail_and_violation() -> None:
    c = filled_counters()
    assert c.failures == {
        ("connect", "ECONNREFUSED"): 2,
        ("steady", "no_answer_from_server"): 1,
        ("steady", "protocol_error"): 1,
    }
    assert c.protocol == {"flood": 1}


def test_snapshot_takes_counts_and_resets_rtt() -> None:
    c = filled_counters()
    snap = c.snapshot()
    assert (snap.open, snap.opened, snap.closed, snap.pings, snap.pongs, snap.skipped) == (3, 10, 7, 100, 98, 2)
    assert snap.failures == {
        "connect:ECONNREFUSED": 2,
        "steady:no_answer_from_server": 1,
        "steady:protocol_error": 1,
    }
    assert snap.failure_total == 4
    assert snap.protocol == {"flood": 1}
    assert rtt_count(snap.rtt) == 3
    # The histogram is an interval delta, the counters are cumulative.
    again = c.snapshot()
    assert again.rtt == ""
    assert again.opened == 10 and again.failures == snap.failures
    c.rtt.record(500)
    assert rtt_count(c.snapshot().rtt) == 1


def test_snapshot_without_reset_keeps_rtt() -> None:
    c = filled_counters()
    assert c.snapshot(reset_rtt=False).rtt
    assert rtt_count(c.snapshot().rtt) == 3


def test_snapshot_is_detached_from_counters() -> None:
    c = filled_counters()
    snap = c.snapshot()
    c.fail("connect", "EMFILE")
    c.violation("flood")
    assert "connect:EMFILE" not in snap.failures
    assert snap.protocol == {"flood": 1}


def test_snapshot_dict_round_trip_through_json() -> None:
    snap = filled_counters().snapshot()
    data = json.loads(json.dumps(snap.to_dict()))
    assert Snapshot.from_dict(data) == snap
    # Extra keys a worker adds (resources, connecting, ...) are ignored.
    data.update(resources={"rss": 1.0}, connecting=5, established=3)
    assert Snapshot.from_dict(data) == snap
    assert Snapshot.from_dict({}) == Snapshot()


def test_sum_snapshots() -> None:
    a = Snapshot(open=1, opened=2, closed=1, pings=5, pongs=4, skipped=1,
                 failures={"connect:EMFILE": 1}, protocol={"flood": 2}, rtt="x")
    b = Snapshot(open=10, opened=20, closed=10, pings=50, pongs=40, skipped=0,
                 failures={"connect:EMFILE": 2, "steady:worker_lost": 3}, protocol={"unknown_line": 1})
    total = sum_snapshots([a, b])
    assert total == Snapshot(
        open=11, opened=22, closed=11, pings=55, pongs=44, skipped=1,
        failures={"connect:EMFILE": 3, "steady:worker_lost": 3},
        protocol={"flood": 2, "unknown_line": 1}, rtt="",
    )
    assert total.failure_total == 6
    assert sum_snapshots([]) == Snapshot()
    assert sum_snapshots(iter([a])).failures == {"connect:EMFILE": 1}
    assert a.failures == {"connect:EMFILE": 1}  # inputs untouched


# ---------------------------------------------------------------- RTT


def hist_of(*values_us: int):  # type: ignore[no-untyped-def]
    h = new_histogram()
    for v in values_us:
        h.record_value(v)
    return h


def test_histogram_encoding_round_trip() -> None:
    h = hist_of(100, 2000, 50_000)
    text = encode_histogram(h)
    assert isinstance(text, str)
    back = decode_histogram(text)
    assert back.get_total_count() == 3
    assert decode_histogram("").get_total_count() == 0


def test_rtt_summary_ms() -> None:
    assert rtt_summary_ms(new_histogram()) == Percentiles(None, None, None, None)
    s = rtt_summary_ms(hist_of(*([1000] * 99), 50_000))
    assert s.p50 == pytest.approx(1.0, rel=0.02)
    assert s.p99 == pytest.approx(1.0, rel=0.02)
    assert s.max == pytest.approx(50.0, rel=0.02)
    assert s.to_wire() == {"p50": s.p50, "p90": s.p90, "p99": s.p99, "max": s.max}


def test_rtt_accumulator_windows_and_total() -> None:
    acc = RttAccumulator()
    acc.add(encode_histogram(hist_of(1000, 1000)))
    acc.add("")  # an interval without samples
    acc.add_histogram(hist_of(3000))
    acc.add_histogram(new_histogram())
    window = acc.take_window()
    assert window.get_total_count() == 3
    assert acc.take_window().get_total_count() == 0
    acc.add(encode_histogram(hist_of(9000)))
    assert acc.take_window().get_total_count() == 1
    assert acc.total.get_total_count() == 4
    assert rtt_summary_ms(acc.total).max == pytest.approx(9.0, rel=0.02)


# ---------------------------------------------------------------- status lines


def test_status_fields_client_order_and_keys() -> None:
    snap = Snapshot(
        open=5, opened=6, closed=1, pings=10, pongs=9,
        failures={"steady:no_answer_from_server": 1, "connect:ECONNREFUSED": 2, "connect:EMFILE": 0},
        protocol={"unexpected_pong": 1, "flood": 0},
    )
    fields = status_fields(snap, hist_of(1000, 2000))
    keys = [k for k, _ in fields]
    assert keys == [
        "open", "opened", "closed", "pings", "pongs", "rtt_p50_ms", "rtt_p99_ms", "failures",
        "fail.connect.ECONNREFUSED", "fail.steady.no_answer_from_server",
        "proto.unexpected_pong",
    ]
    values = dict(fields)
    assert values["open"] == "5" and values["failures"] == "3"
    assert values["fail.connect.ECONNREFUSED"] == "2"
    assert re.fullmatch(r"\d+\.\d{3}", values["rtt_p50_ms"])
    assert float(values["rtt_p50_ms"]) == pytest.approx(1.0, rel=0.02)
    assert float(values["rtt_p99_ms"]) == pytest.approx(2.0, rel=0.02)


def test_status_fields_rtt_dash_when_empty() -> None:
    values = dict(status_fields(Snapshot(), new_histogram()))
    assert values["rtt_p50_ms"] == "-" and values["rtt_p99_ms"] == "-"
    assert values["failures"] == "0"


def test_status_fields_server_has_no_rtt() -> None:
    snap = Snapshot(open=1, failures={"steady:protocol_error": 3}, protocol={"line_too_long": 1, "flood": 2})
    keys = [k for k, _ in status_fields(snap, None)]
    assert keys == [
        "open", "opened", "closed", "pings", "pongs", "failures",
        "fail.steady.protocol_error", "proto.flood", "proto.line_too_long",
    ]


def test_status_fail_keys_sorted() -> None:
    failures = {f"{p}:{c}": 1 for p in reversed(PHASES) for c in ("unknown", "EMFILE", "closed_by_peer")}
    keys = [k for k, _ in status_fields(Snapshot(failures=failures), None) if k.startswith("fail.")]
    assert keys == sorted(keys) and len(keys) == 9


def test_format_and_parse_status_are_inverse() -> None:
    snap = filled_counters().snapshot()
    fields = status_fields(snap, decode_histogram(snap.rtt))
    line = format_status(fields)
    assert "\n" not in line
    assert line.startswith("open=3 opened=10 closed=7 pings=100 pongs=98 rtt_p50_ms=")
    assert parse_status(line) == dict(fields)
    assert list(parse_status(line)) == [k for k, _ in fields]


def test_parse_status_ignores_prefix_and_odd_tokens() -> None:
    line = "2024-01-01T00:00:00 [connscale.status#info] open=1 rtt_p50_ms=- junk failures=0"
    assert parse_status(line) == {"open": "1", "rtt_p50_ms": "-", "failures": "0"}
