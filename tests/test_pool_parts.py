"""The pool's helpers, each driven alone on a fake clock: pacing (net.pacing), the
replacements' backoff (net.replace), spreading over routes (net.spread) and the
dialer's connectors across a new route table (net.dial). The pool's own tests
(tests/test_pool.py) drive them together."""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from connscale.net.dial import Dialer
from connscale.net.pacing import PACE_BATCH, Pacer, pace_tick
from connscale.net.replace import REPLACE_BACKOFF, REPLACE_BACKOFF_MAX, Replacements
from connscale.net.routes import Route
from connscale.net.spread import RouteTable


def test_the_pacer_opens_one_at_once_then_batches_at_the_rate() -> None:
    clock, opened = Clock(), []
    pacer = Pacer(clock, lambda: 400.0, lambda: opened.append(clock.seconds()))
    pacer.add(100)
    assert opened == [0.0] and pacer.pending == 99
    pacer.add(10)  # a batch is already scheduled: nothing more at once
    assert len(opened) == 1 and pacer.pending == 109
    clock.advance(pace_tick(400.0))
    assert len(opened) == 1 + PACE_BATCH
    assert pacer.take(1000) == 109 - PACE_BATCH and pacer.pending == 0
    clock.advance(1.0)
    assert len(opened) == 1 + PACE_BATCH and not clock.getDelayedCalls()  # nothing left: no wake-ups


def test_replacements_wait_out_a_backoff_that_doubles_until_one_succeeds() -> None:
    clock, released = Clock(), []
    r = Replacements(clock, released.append)
    r.one_more()
    r.one_more()
    clock.advance(REPLACE_BACKOFF)
    assert released == [2] and r.waiting == 0
    r.one_more()
    clock.advance(REPLACE_BACKOFF)
    assert released == [2]  # the second wait is twice as long
    clock.advance(REPLACE_BACKOFF)
    assert released == [2, 1]
    for _ in range(10):
        r.one_more()
        clock.advance(REPLACE_BACKOFF_MAX)
    assert r.backoff == REPLACE_BACKOFF_MAX
    r.succeeded()
    r.one_more()
    clock.advance(REPLACE_BACKOFF)
    assert released[-1] == 1 and r.waiting == 0


def test_replacements_taken_back_or_cancelled_are_not_released() -> None:
    clock, released = Clock(), []
    r = Replacements(clock, released.append)
    for _ in range(3):
        r.one_more()
    assert r.take(2) == 2 and r.waiting == 1
    clock.advance(REPLACE_BACKOFF)
    assert released == [1]
    r.one_more()
    r.cancel()
    clock.advance(REPLACE_BACKOFF_MAX)
    assert released == [1] and r.waiting == 0 and not clock.getDelayedCalls()


def test_routes_are_taken_round_robin_within_their_quotas_and_full_is_said_once() -> None:
    table = RouteTable([Route(None, "127.0.0.1", 1, quota=1), Route(None, "127.0.0.1", 2, quota=2)])
    assert [table.take() for _ in range(3)] == [0, 1, 1]
    assert table.load == [1, 2] and table.capacity() == 3
    with capturedLogs() as events:
        assert table.take() == -1 and table.take() == -1
    assert len(events) == 1 and events[0]["capacity"] == 3
    table.release(1)
    table.release(-1)  # no route: nothing to count
    assert table.take() == 1 and table.load == [1, 2]


def test_a_new_table_keeps_routes_by_tuple_whatever_their_quota() -> None:
    a, b, c = (Route("127.0.0.2", "127.0.0.1", port) for port in (1, 2, 3))
    table = RouteTable([a, b])
    table.take()
    table.take()
    moved = table.replace([attrs.evolve(b, quota=5), c])
    assert moved == [-1, 0] and table.load == [0, 0]  # a is gone, b is now the first
    assert table.hold(moved[1]) == 0 and table.hold(moved[0]) == -1 and table.load == [1, 0]
    assert table.get(-1) is None and table.get(1) == c


def test_the_dialers_connectors_follow_their_routes_to_a_new_table() -> None:
    a, b = Route(None, "127.0.0.1", 1), Route(None, "127.0.0.1", 2)
    table = RouteTable([a, b])
    dialer = Dialer(None, None, None, table, reset_on_close=False)  # type: ignore[arg-type]
    on_a, on_b, on_none = object(), object(), object()
    dialer.connectors.update({on_a: table.take(), on_b: table.take(), on_none: -1})
    dialer.routes_moved(table.replace([b]))
    assert dialer.connectors == {on_a: -1, on_b: 0, on_none: -1} and table.load == [1]
