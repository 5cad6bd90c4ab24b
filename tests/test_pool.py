"""Pool policy with a fake clock and in-memory transports."""

import attrs
from twisted.internet import error
from twisted.python.failure import Failure

from connscale.net.routes import Route, make_routes
from connscale.net.wire import ClientConnection
from tests.support.pool import Harness


def test_connects_are_paced():
    h = Harness(rate=1000)
    h.pool.start(500)
    h.run(0.1)
    assert 90 <= len(h.dialed) <= 111
    h.run(0.5)
    assert len(h.dialed) == 500
    assert h.pool.count() == 500


def test_a_small_rate_is_paced_in_batches_of_fewer_wake_ups_at_the_same_rate():
    from connscale.net.pacing import PACE_BATCH, PACE_TICK, PACE_TICK_MAX, pace_tick

    assert pace_tick(15_000) == PACE_TICK  # a whole agent's rate: every 10 ms
    assert pace_tick(283) == PACE_BATCH / 283  # a worker's share of a million's ramp: ~28 ms
    assert pace_tick(20) == PACE_TICK_MAX and pace_tick(0) == PACE_TICK_MAX

    h = Harness(rate=283)
    wakes = []
    real_pace = h.pool.pacer.wake

    def counted():
        wakes.append(h.clock.seconds())
        real_pace()

    h.pool.pacer.wake = counted
    h.pool.start(2000)
    h.run(5.0, step=0.001)
    # The rate asked, within a batch, over 5 s ...
    assert abs(len(h.dialed) - 1 - 283 * 5) <= PACE_BATCH + 1
    # ... in ~36 wake-ups a second instead of 100, each opening a batch.
    assert 150 <= len(wakes) <= 200
    gaps = [b - a for a, b in zip(wakes, wakes[1:])]
    assert min(gaps) >= PACE_BATCH / 283 - 1e-9


def test_a_new_rate_in_the_settings_paces_the_connects_still_to_come():
    # A worker's share of a ramp changes while it runs: procs/worker.py gives its pool new settings.
    h = Harness(rate=100)
    h.pool.start(1000)
    h.run(1.0)
    assert 90 <= len(h.dialed) <= 111
    h.pool.settings = attrs.evolve(h.pool.settings, rate=1000)
    h.run(0.5)
    assert 550 <= len(h.dialed) <= 620


def test_first_ping_at_random_offset_within_interval_then_every_interval():
    h = Harness(rate=10_000, interval=2.0, timeout=0.5)
    h.pool.start(200)
    h.run(0.05)
    start = h.clock.seconds()
    first = {}
    for _ in range(220):
        h.run(0.01)
        for _, conn, t in h.dialed:
            if conn not in first and t.value():
                first[conn] = h.clock.seconds() - start
        h.answer_all()
    assert len(first) == 200
    assert 0 < min(first.values()) and max(first.values()) <= 2.0 + 0.05
    assert max(first.values()) - min(first.values()) > 1.0  # spread, not a burst
    for _ in range(200):
        h.run(0.01)
        h.answer_all()
    c = h.pool.counters
    assert c.pings >= 400 and c.pongs == c.pings and not c.failures


def test_missing_pong_closes_with_no_answer_from_server():
    h = Harness(rate=10_000, interval=1.0, timeout=0.3, replace=False)
    h.pool.start(10)
    h.run(1.5)  # everyone pinged once, nobody answered
    c = h.pool.counters
    assert c.failures == {("first_ping", "no_answer_from_server"): 10}
    assert h.pool.count() == 0 and c.closed == 10


def one_pinged(step: float) -> tuple[Harness, ClientConnection]:
    """A pool of one connection (interval 1 s, timeout 0.5 s), its clock advanced `step` at a
    time until the connection's first ping is written."""
    h = Harness(rate=10_000, interval=1.0, timeout=0.5)
    h.pool.start(1)
    h.run(0.02)
    (_, conn, t), = h.dialed
    while not t.value():
        h.clock.advance(step)
    return h, conn


def test_timeout_never_early():
    h, conn = one_pinged(0.01)
    sent = h.clock.seconds()
    while conn.state == conn.OPEN:
        h.run(0.01)
    assert h.clock.seconds() - sent >= 0.5 - 1e-9


def test_timeout_longer_than_interval_skips_pings():
    h = Harness(rate=10_000, interval=1.0, timeout=3.5)
    h.pool.start(1)
    h.run(5.0)
    c = h.pool.counters
    assert c.pings == 1 and c.skipped >= 2
    assert c.failures == {("first_ping", "no_answer_from_server"): 1}


def test_steady_phase_after_first_pong_and_rtt_recorded():
    h = Harness(rate=10_000, interval=1.0, timeout=0.3, replace=False)
    h.pool.start(1)
    for _ in range(150):
        h.run(0.01)
        h.answer_all()
    c = h.pool.counters
    assert c.pongs >= 1 and c.rtt.total() == c.pongs
    h.run(2.0)  # stop answering
    assert c.failures == {("steady", "no_answer_from_server"): 1}


def test_stop_takes_pending_then_oldest_first():
    h = Harness(rate=100)
    h.pool.start(50)
    h.run(0.2)  # ~20 dialed, ~30 pending
    opened = [conn for _, conn, _ in h.dialed]
    before = h.pool.pending
    assert h.pool.stop(before + 5) == before + 5
    assert h.pool.pending == 0
    closed = [conn for conn in opened if conn.state == conn.CLOSED]
    assert closed == opened[:5]
    assert h.pool.counters.failures == {}
    assert h.pool.count() == len(opened) - 5


def test_set_target_grows_and_shrinks():
    h = Harness(rate=10_000)
    h.pool.set_target(30)
    h.run(0.1)
    assert h.pool.count() == 30
    h.pool.set_target(10)
    assert h.pool.count() == 10
    h.pool.set_target(12)
    h.run(0.1)
    assert h.pool.count() == 12


def test_stop_while_connecting_is_not_a_failure():
    h = Harness(rate=10_000, auto_connect=False)
    h.pool.start(3)
    h.run(0.01)
    assert h.pool.connecting == 3
    h.pool.stop(3)
    assert h.pool.connecting == 0 and h.pool.counters.failures == {}
    assert all(t.stopped for _, _, t in h.dialed)


def test_connect_failure_classified():
    h = Harness(rate=10_000, auto_connect=False)
    h.pool.start(2)
    h.run(0.01)
    _, conn, _ = h.dialed[0]
    conn.pool.factory.clientConnectionFailed(conn.transport, Failure(error.ConnectionRefusedError()))
    _, conn, _ = h.dialed[1]
    conn.pool.factory.clientConnectionFailed(
        conn.transport, Failure(error.ConnectBindError(99, "Cannot assign requested address")))
    assert h.pool.counters.failures == {("connect", "ECONNREFUSED"): 1, ("connect", "EADDRNOTAVAIL"): 1}


def test_peer_close_and_garbage_are_classified():
    h = Harness(rate=10_000)
    h.pool.start(2)
    h.run(0.05)
    (_, a, _), (_, b, tb) = h.dialed
    a.connectionLost(Failure(error.ConnectionDone()))
    b.dataReceived(b"Hello\n")
    c = h.pool.counters
    assert c.failures == {("first_ping", "closed_by_peer"): 1, ("first_ping", "protocol_error"): 1}
    assert c.protocol == {"unknown_line": 1}


def test_routes_round_robin_and_quota():
    routes = make_routes("127.0.0.1", [1, 2], ["127.0.0.2", "127.0.0.3"], quota=3)
    assert len(routes) == 4
    h = Harness(routes=routes, rate=10_000)
    h.pool.start(14)
    h.run(0.05)
    used = [r for r, _, _ in h.dialed]
    assert len(used) == 12 and all(used.count(r) == 3 for r in routes)
    assert used[:4] == routes
    assert h.pool.counters.failures == {("connect", "route_quota"): 2}


def test_raw_framing_client():
    h = Harness(rate=10_000, framing="raw", interval=1.0, timeout=0.5)
    h.pool.start(1)
    h.run(1.05)
    (_, conn, t), = h.dialed
    assert t.value() == b"Ping"
    conn.dataReceived(b"Po")
    conn.dataReceived(b"ng")
    assert h.pool.counters.pongs == 1


def test_close_all_fires_when_drained():
    h = Harness(rate=10_000)
    h.pool.start(5)
    h.run(0.05)
    d = h.pool.close_all()
    assert d.called and h.pool.count() == 0


def test_hundred_thousand_connections_share_one_timer():
    h = Harness(routes=[Route(None, "127.0.0.1", 8989, quota=100_000)], immediate=True,
                rate=1_000_000, interval=5.0, timeout=1.0, replace=False)
    h.pool.start(100_000)
    h.run(0.2, step=0.01)
    assert h.pool.count() == 100_000
    # The pacer is done; what remains is the wheel's single DelayedCall.
    assert len(h.clock.getDelayedCalls()) == 1
    h.run(5.0, step=0.05)
    assert h.pool.counters.pings == 100_000
    assert len(h.clock.getDelayedCalls()) == 1


def test_a_pong_after_the_deadline_is_a_timeout_even_before_the_tick():
    h, conn = one_pinged(0.003)  # off the 10 ms grid: the deadline falls between ticks
    sent = conn.sent_at
    h.clock.advance(sent + 0.5 + 0.002 - h.clock.seconds())
    assert conn.state == conn.OPEN  # the wheel's tick for the deadline has not come yet
    conn.dataReceived(b"Pong\n")
    c = h.pool.counters
    assert c.pongs == 0
    assert c.failures == {("first_ping", "no_answer_from_server"): 1}


def refuse(h, conns):
    for conn in conns:
        conn.pool.factory.clientConnectionFailed(conn.transport, Failure(error.ConnectionRefusedError()))


def test_refused_connects_are_replaced_with_backoff_until_the_target_is_held():
    from connscale.net.replace import REPLACE_BACKOFF

    h = Harness(rate=10_000, auto_connect=False)
    h.pool.set_target(5)
    h.run(0.01)
    refuse(h, [conn for _, conn, _ in h.dialed])
    assert h.pool.counters.failures == {("connect", "ECONNREFUSED"): 5}
    # Counted, not forgotten: the pool still wants five.
    assert h.pool.replacing == 5 and h.pool.wanted() == 5
    h.run(REPLACE_BACKOFF - 0.02)
    assert len(h.dialed) == 5  # nothing retried before the backoff
    h.run(0.05)
    assert len(h.dialed) == 10
    # Still refused: the next wait is twice as long.
    refuse(h, [conn for _, conn, _ in h.dialed[5:]])
    h.run(2 * REPLACE_BACKOFF - 0.02)
    assert len(h.dialed) == 10
    h.run(0.05)
    assert len(h.dialed) == 15
    # The server is back: the replacements connect and the target is held.
    for _, conn, t in h.dialed[10:]:
        conn.makeConnection(t)
    assert h.pool.count() == 5 and h.pool.replacing == 0
    assert h.pool.counters.failures == {("connect", "ECONNREFUSED"): 10}


def test_a_success_resets_the_backoff():
    from connscale.net.replace import REPLACE_BACKOFF

    h = Harness(rate=10_000, auto_connect=False)
    h.pool.set_target(2)
    h.run(0.01)
    refuse(h, [h.dialed[0][1]])
    h.run(REPLACE_BACKOFF + 0.02)
    refuse(h, [h.dialed[2][1]])  # the backoff doubles...
    _, conn, t = h.dialed[1]
    conn.makeConnection(t)  # ...until a connect succeeds
    h.run(REPLACE_BACKOFF * 2 + 0.02)
    refuse(h, [h.dialed[3][1]])
    h.run(REPLACE_BACKOFF + 0.02)
    assert len(h.dialed) == 5


def test_lost_and_rejected_connections_are_replaced():
    h = Harness(rate=10_000, interval=60.0, timeout=10.0)
    h.pool.set_target(4)
    h.run(0.05)
    (_, a, _), (_, b, _), _, _ = h.dialed
    a.connectionLost(Failure(error.ConnectionLost()))
    b.dataReceived(b"Hello\n")
    assert h.pool.count() == 2 and h.pool.wanted() == 4
    h.run(0.6)
    assert h.pool.count() == 4 and len(h.dialed) == 6
    assert h.pool.counters.failures == {("first_ping", "ECONNRESET"): 1, ("first_ping", "protocol_error"): 1}


def test_stopping_takes_waiting_replacements_before_live_connections():
    h = Harness(rate=10_000, auto_connect=False)
    h.pool.set_target(3)
    h.run(0.01)
    refuse(h, [h.dialed[0][1]])
    for _, conn, t in h.dialed[1:]:
        conn.makeConnection(t)
    assert h.pool.stop(1) == 1
    assert h.pool.replacing == 0 and h.pool.count() == 2
    h.run(2.0)
    assert len(h.dialed) == 3  # the replacement was cancelled, not just delayed


def test_close_all_drops_waiting_replacements():
    h = Harness(rate=10_000, auto_connect=False)
    h.pool.set_target(2)
    h.run(0.01)
    refuse(h, [conn for _, conn, _ in h.dialed])
    h.pool.close_all()
    h.run(2.0)
    assert len(h.dialed) == 2 and h.pool.wanted() == 0


def test_full_routes_are_not_retried():
    h = Harness(routes=[Route(None, "127.0.0.1", 8989, quota=1)], rate=10_000)
    h.pool.set_target(3)
    h.run(2.0)
    assert h.pool.count() == 1 and len(h.dialed) == 1
    assert h.pool.counters.failures == {("connect", "route_quota"): 2}
