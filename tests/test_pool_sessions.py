"""The pool with a profile that opens a session first: counted as connecting until it opens,
its failures phase connect, a handshake that never completes times out, the server's words kept."""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure

from connscale.config.target import ProfileOptions
from tests.support.pool import Harness


def redis_harness(**settings):
    return Harness(interval=1.0, timeout=0.5, profile=ProfileOptions(protocol="redis", handshake_timeout=2.0),
                   **settings)


def test_a_session_counts_as_open_only_once_it_opened():
    h = redis_harness()
    h.pool.start(3)
    h.run(0.05)
    assert len(h.dialed) == 3
    assert h.pool.count() == 0 and h.pool.connecting == 3 and h.pool.counters.open == 0
    for _, conn, t in h.dialed:
        assert t.value() == b"*1\r\n$4\r\nPING\r\n"  # the opening
        t.clear()
        conn.dataReceived(b"+PONG\r\n")
    assert h.pool.count() == 3 and h.pool.connecting == 0 and h.pool.counters.open == 3
    assert h.pool.counters.pongs == 0  # the opening's answer is not a keepalive's RTT
    for _ in range(110):  # a second and a bit: every connection pings once, and is answered at once
        h.run(0.01)
        for _, conn, t in h.dialed:
            if t.value():
                assert t.value() == b"*1\r\n$4\r\nPING\r\n"
                t.clear()
                conn.dataReceived(b"+PONG\r\n")
    assert h.pool.counters.pongs == 3 and h.pool.counters.failures == {}


def test_a_refusal_before_the_session_is_phase_connect_with_the_servers_words():
    h = redis_harness(replace=False)
    h.pool.start(1)
    h.run(0.05)
    _, conn, t = h.dialed[0]
    conn.dataReceived(b"-ERR max number of clients reached\r\n")
    c = h.pool.counters
    assert c.failures == {("connect", "redis_maxclients"): 1}
    assert c.said == {"redis_maxclients": "-ERR max number of clients reached"}
    assert h.pool.connecting == 0 and h.pool.count() == 0 and c.open == 0 and c.closed == 0
    assert h.pool.wanted() == 0


def test_a_close_before_the_session_is_phase_connect():
    h = redis_harness(replace=False)
    h.pool.start(1)
    h.run(0.05)
    _, conn, _ = h.dialed[0]
    conn.connectionLost(Failure(error.ConnectionDone()))
    assert h.pool.counters.failures == {("connect", "closed_by_peer"): 1}
    assert h.pool.connecting == 0 and h.pool.counters.open == 0


def test_a_session_that_never_opens_times_out():
    h = redis_harness(replace=False)
    h.pool.start(1)
    h.run(1.9)
    assert h.pool.counters.failures == {}
    h.run(0.2)
    assert h.pool.counters.failures == {("connect", "handshake_timeout"): 1}
    assert h.pool.connecting == 0


def test_stopping_a_connection_mid_handshake_counts_no_failure():
    h = redis_harness(replace=False)
    h.pool.start(2)
    h.run(0.05)
    assert h.pool.stop(2) == 2
    assert h.pool.counters.failures == {} and h.pool.connecting == 0 and h.pool.wanted() == 0


def test_line_is_still_open_at_connect():
    h = Harness(interval=1.0)
    h.pool.start(1)
    h.run(0.05)
    assert h.pool.count() == 1 and h.pool.ping == b"Ping\n"
    assert Harness(framing="raw").pool.ping == b"Ping"
