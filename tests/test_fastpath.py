"""The fast-path switch and what stands in for the fast path when it is off.

Unit tests on fake clocks and in-process reactors; the end-to-end tests run in
both modes (tests/test_e2e_core.py, tests/test_e2e_run.py).
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.interfaces import IConnector
from zope.interface.verify import verifyObject

from connscale.app.startup import load_or_exit
from connscale.metrics.counters import Counters
from connscale.net import fastpath
from connscale.net.connector import ClientTransport, DialTarget
from connscale.net.dispatch import EPOLLIN, loop_for
from connscale.net.pool import ConnectionPool, PoolSettings
from connscale.net.port import ListeningPort
from connscale.net.routes import Route
from connscale.net.server import PingServerFactory, bind_sockets, listen_on
from connscale.net.wheel import CallLaterTimers, TimerWheel
from tests.support.loop import spin


# -- the switch ---------------------------------------------------------------------

@pytest.mark.parametrize("value, want", [("1", True), ("on", True), ("TRUE", True), ("0", False),
                                         ("off", False), (" no ", False)])
def test_the_environment_says_on_or_off(value: str, want: bool) -> None:
    assert fastpath.from_env({fastpath.ENV: value}) is want
    assert fastpath.enabled(not want, {fastpath.ENV: value}) is want  # it wins over the config


def test_without_the_environment_the_config_decides() -> None:
    assert fastpath.from_env({}) is None and fastpath.from_env({fastpath.ENV: ""}) is None
    assert fastpath.enabled(True, {}) is True and fastpath.enabled(False, {}) is False


def test_a_bad_value_is_one_line_naming_the_variable() -> None:
    with pytest.raises(fastpath.FastPathError, match=r"CONNSCALE_FAST_PATH='maybe': expected one of 1, on"):
        fastpath.from_env({fastpath.ENV: "maybe"})


def test_every_command_applies_the_environment_to_net_fast_path(monkeypatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("net:\n  fast_path: true\n")
    monkeypatch.setenv(fastpath.ENV, "off")
    assert load_or_exit("prog", str(cfg)).net.fast_path is False
    monkeypatch.delenv(fastpath.ENV)
    assert load_or_exit("prog", str(cfg)).net.fast_path is True
    monkeypatch.setenv(fastpath.ENV, "sometimes")
    with pytest.raises(SystemExit) as e:
        load_or_exit("prog", str(cfg))
    assert e.value.code == 2
    assert "CONNSCALE_FAST_PATH='sometimes'" in capsys.readouterr().err


def test_off_means_twisted_transports_and_no_loop(reactor) -> None:
    assert fastpath.loop(reactor, False) is None
    pool = ConnectionPool(reactor, reactor, PoolSettings(), [], fast_path=False)
    assert isinstance(pool.wheel, CallLaterTimers)
    pool = ConnectionPool(reactor, reactor, PoolSettings(), [], fast_path=True)
    assert isinstance(pool.wheel, TimerWheel)


# -- a callLater per connection ---------------------------------------------------------

class Item:
    def __init__(self) -> None:
        self.due = -1


def test_call_later_timers_fire_at_their_time_and_cancel() -> None:
    clock = task.Clock()
    fired: list[tuple[Item, float]] = []
    timers = CallLaterTimers(clock, fire=lambda item, now: fired.append((item, now)))
    a, b = Item(), Item()
    timers.schedule(a, 1.234)
    timers.schedule(b, 0.5)
    timers.schedule(b, 2.0)  # rescheduled: only the later one stands
    assert len(timers) == 2 and len(clock.getDelayedCalls()) == 2
    clock.advance(1.234)
    assert fired == [(a, 1.234)] and a.due == -1  # at its time, not on a tick
    timers.cancel(b)
    clock.advance(5)
    assert fired == [(a, 1.234)] and len(timers) == 0 and clock.getDelayedCalls() == []


def test_a_failing_callback_is_counted_and_the_rest_still_fire() -> None:
    clock = task.Clock()
    fired = []

    def fire(item: Item, now: float) -> None:
        if item is bad:
            raise RuntimeError("boom")
        fired.append(item)

    timers = CallLaterTimers(clock, fire=fire)
    bad, good = Item(), Item()
    timers.schedule(bad, 1)
    timers.schedule(good, 1)
    clock.advance(1)
    assert fired == [good] and timers.errors == 1


# -- the lean main loop ------------------------------------------------------------------

def test_the_lean_loop_runs_timers_thread_calls_and_events_then_stops(reactor) -> None:
    loop = loop_for(reactor)
    assert loop is not None
    order: list[str] = []
    runs = []
    real = reactor.runUntilCurrent

    def counted() -> None:
        runs.append(1)
        real()

    reactor.runUntilCurrent = counted
    a, b = socket.socketpair()
    a.setblocking(False)

    class Handler:
        events = 0

        def on_event(self, events: int) -> None:
            # One byte per event: level-triggered epoll reports the rest on the next
            # turns, so 50 bytes are at least 50 turns of the loop, however they arrived.
            data = a.recv(1)
            Handler.events += len(data)
            if Handler.events == 50:
                order.append("50 events")
                reactor.callLater(0, later)

        def fail(self, failure: Any) -> None:
            raise AssertionError(failure)

    def later() -> None:
        order.append("timer after events")
        threading.Thread(target=lambda: reactor.callFromThread(stop)).start()

    def stop() -> None:
        order.append("thread call")
        reactor.stop()

    reactor.addSystemEventTrigger("during", "shutdown", lambda: order.append("shutdown"))
    loop.add(a.fileno(), Handler(), EPOLLIN)

    def send() -> None:
        for _ in range(50):
            b.send(b"x")  # one byte each, read in as many turns as the kernel hands them over

    reactor.callLater(0.01, lambda: order.append("first timer"))
    reactor.callLater(0.02, send)
    reactor.callLater(30, lambda: order.append("never"))
    reactor.run(installSignalHandlers=False)
    assert order == ["first timer", "50 events", "timer after events", "thread call", "shutdown"]
    # The timers ran when due, not once per turn of the loop (Twisted's own loop: >= 50).
    assert len(runs) < 20, len(runs)
    a.close()
    b.close()


# -- the lean client transport is its own IConnector ---------------------------------------

def test_a_lean_transport_is_a_connector_with_its_destination(reactor) -> None:
    counters = Counters()
    port = listen_on(reactor, bind_sockets("127.0.0.1", [0], 64)[0], PingServerFactory("line", counters),
                     counters.fail, fast_path=True)
    assert isinstance(port, ListeningPort)
    number = port.getHost().port
    made, failed = [], []

    class Proto:
        def makeConnection(self, transport: Any) -> None:
            made.append(transport)

        def connectionLost(self, reason: Any) -> None:
            pass

    class Factory:
        def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
            failed.append(connector)

    loop = loop_for(reactor)
    target = DialTarget("127.0.0.1", number, "127.0.0.2")
    t = ClientTransport(loop, Proto(), Factory())
    verifyObject(IConnector, t)
    t.dial(target)
    assert t.getDestination() == target.address and target.address.port == number
    spin(reactor, lambda: made and counters.open == 1)
    assert t.factory.__class__ is Factory and made == [t]
    t.disconnect()
    spin(reactor, lambda: counters.open == 0)
    assert failed == []


# -- the pool over Twisted's transports ----------------------------------------------------

def test_the_pool_off_the_fast_path_dials_with_connect_tcp_and_the_same_factory(reactor) -> None:
    counters = Counters()
    port = listen_on(reactor, bind_sockets("127.0.0.1", [0], 64)[0], PingServerFactory("line", counters),
                     counters.fail, fast_path=False)
    assert not isinstance(port, ListeningPort)  # Twisted's own port
    number = port.getHost().port
    routes = [Route("127.0.0.2", "127.0.0.1", number, 5), Route("127.0.0.3", "127.0.0.1", number, 5)]
    pool = ConnectionPool(reactor, reactor, PoolSettings(interval=0.1, timeout=2.0, rate=1000), routes,
                          fast_path=False)
    pool.set_target(8)
    spin(reactor, lambda: pool.established == 8 and counters.open == 8)
    spin(reactor, lambda: pool.counters.pongs >= 16, what="every connection answered twice")
    conns = list(pool._live())
    assert all(not isinstance(c.transport, ClientTransport) for c in conns)
    assert sorted(c.route for c in conns) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert pool.spread.load == [4, 4] and pool.counters.failures == {}
    assert pool.stop(3) == 3
    spin(reactor, lambda: pool.established == 5 and counters.open == 5)
    d = pool.close_all()
    spin(reactor, lambda: d.called and counters.open == 0)
    assert pool.spread.load == [0, 0] and pool.counters.failures == {}


def test_a_refused_dial_off_the_fast_path_frees_its_route_and_counts_by_cause(reactor) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    pool = ConnectionPool(reactor, reactor, PoolSettings(interval=1, timeout=1, rate=1000),
                          [Route(None, "127.0.0.1", closed, 10)], fast_path=False)
    pool.set_target(2)
    spin(reactor, lambda: sum(pool.counters.failures.values()) >= 2)
    assert pool.counters.failures[("connect", "ECONNREFUSED")] >= 2
    assert pool.spread.load == [0] and pool.connecting == 0
    pool.close_all()
