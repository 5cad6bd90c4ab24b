"""control: PB logins, agent registration and the orders the controller gives.

Everything runs over in-memory PB connections (twisted.test.iosim) with a
fake clock, so no reactor runs and no socket is opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.spread import pb

from connscale.config.loader import parse_config
from connscale.control import dial
from connscale.control.auth import CredentialError
from connscale.control.controller import ControlError, Controller
from connscale.control.login import HubNotAuthentic
from connscale.metrics.histograms import Percentiles
from connscale.metrics.records import SCHEMA, Stats
from connscale.metrics.timeline import Timeline, read_timeline
from tests.support.control import SECRET, FakeMind, Link, make_cfg, register, row_total, run, targets

# ---------------------------------------------------------------- logins


def test_operator_login_with_right_secret(controller: Controller) -> None:
    link = Link(controller)
    perspective = link.login(b"operator")
    assert isinstance(perspective, pb.RemoteReference)
    assert link.wait(perspective.callRemote("clients")) == []


def test_login_with_wrong_secret_is_refused(controller: Controller) -> None:
    # With another secret the hub's proof does not check out: we hang up first.
    result = Link(controller).login(b"operator", secret=b"not-the-secret")
    assert isinstance(result, Failure) and result.check(HubNotAuthentic)
    assert "did not prove it knows the control secret" in result.getErrorMessage()
    result = Link(controller).login(b"agent:x", secret=b"not-the-secret", mind=FakeMind())
    assert isinstance(result, Failure) and result.check(HubNotAuthentic)
    assert controller.agents == {}


def test_unknown_role_is_refused(controller: Controller) -> None:
    result = Link(controller).login(b"janitor")
    assert isinstance(result, Failure) and result.check(CredentialError)
    assert controller.agents == {}


def test_agent_without_mind_is_refused(controller: Controller) -> None:
    # Not just "some failure": the login is refused, for this reason, and nobody is registered.
    result = Link(controller).login(b"agent:x", mind=None)
    assert isinstance(result, Failure) and dial.is_unauthorized(result.value)
    assert result.getErrorMessage() == "an agent login needs a mind to take orders"
    assert controller.agents == {}


# ---------------------------------------------------------------- registration


def test_register_lists_the_agent(controller: Controller) -> None:
    link, mind, answer = register(controller)
    assert answer["target"] == 0 and len(answer["session"]) == 64
    assert controller.clients() == [
        {"name": "x", "connected": True, "host": "loadgen-1", "pid": 4242, "workers": 0, "target": 0,
         "open": 0, "launched": False}
    ]
    assert any("agent x registered from loadgen-1" in e for e in controller.events)


def test_operator_sees_agents_over_pb(controller: Controller) -> None:
    register(controller)
    op = Link(controller)
    perspective = op.login(b"operator")
    clients = op.wait(perspective.callRemote("clients"))
    assert [c["name"] for c in clients] == ["x"] and clients[0]["connected"] is True


def test_connections_start_and_stop(controller: Controller) -> None:
    link, mind, _ = register(controller)
    target = run(link, controller.connections_start(25000, "x"))
    assert target == 25000
    # budget 19900 -> 18905 per worker -> two workers for 25000
    assert mind.ensure_calls == [2]
    orders = mind.applied[-1]
    assert row_total(orders) == 25000
    assert targets(orders) == [12500, 12500]
    for order in orders:
        # Every worker gets every configured route, a share of the tuple capacity.
        assert [r.key() for r in order.routes] == [(None, "127.0.0.1", 8989), (None, "127.0.0.1", 8990)]
        assert [r.quota for r in order.routes] == [7000, 7000]
    for i in range(2):
        assert sum(o.routes[i].quota for o in orders) == 14000  # each tuple's shares: its full cap
    assert controller.agents["x"].worker_targets == [12500, 12500]
    assert controller.clients()[0]["target"] == 25000 and controller.clients()[0]["workers"] == 2

    target = run(link, controller.connections_stop(5000, "x"))
    assert target == 20000
    assert row_total(mind.applied[-1]) == 20000
    assert targets(mind.applied[-1]) == [10000, 10000]
    assert mind.ensure_calls == [2, 2]  # never fewer workers than it has


def test_connections_without_client_name_when_one_agent(controller: Controller) -> None:
    link, mind, _ = register(controller)
    assert run(link, controller.connections_start(10)) == 10
    assert run(link, controller.connections_stop(100)) == 0
    assert row_total(mind.applied[-1]) == 0


def test_orders_over_operator_pb(controller: Controller) -> None:
    agent_link, mind, _ = register(controller)
    op = Link(controller)
    perspective = op.login(b"operator")
    # operator -> controller -> agent -> controller -> operator: pump both links.
    d = perspective.callRemote("connections_start", 300, "x")
    for _ in range(10):
        op.pump.flush()
        agent_link.pump.flush()
    assert d.called and d.result == 300
    assert row_total(mind.applied[-1]) == 300
    d = perspective.callRemote("connections_stop", 100, "x")
    for _ in range(10):
        op.pump.flush()
        agent_link.pump.flush()
    assert d.result == 200


def test_capacity_limited_by_routes_is_noted(clock: Clock) -> None:
    controller = Controller(clock, make_cfg(server="127.0.0.1:8989"), SECRET)
    link, mind, _ = register(controller)
    target = run(link, controller.connections_start(25000, "x"))
    # One route of 14000: the plan holds what the tuple allows and says so.
    assert target == 14000
    assert row_total(mind.applied[-1]) == 14000
    assert any("exceed what its routes allow (14000)" in e for e in controller.events)


def test_source_ips_from_agent_info(controller: Controller) -> None:
    link, mind, _ = register(controller, source_ips=["10.0.0.1", "10.0.0.2"])
    run(link, controller.connections_start(100, "x"))
    routes = mind.applied[-1][0].routes
    assert sorted({r.src for r in routes}) == ["10.0.0.1", "10.0.0.2"]
    assert len(routes) == 4  # 2 sources x 2 ports


def test_tuple_cap_is_limited_by_the_agents_ephemeral_range(controller: Controller) -> None:
    link, mind, _ = register(controller, ephemeral=1000)
    target = run(link, controller.connections_start(5000, "x"))
    assert target == 2000  # 2 routes x min(14000, 1000)


def test_unknown_client_is_a_control_error(controller: Controller) -> None:
    link, _, _ = register(controller)
    for d in (controller.connections_start(10, "nope"), controller.connections_stop(10, "nope"),
              controller.count_connections("nope")):
        f = run(link, d)
        assert isinstance(f, Failure) and f.check(ControlError)
        assert f.getErrorMessage() == "no connected agent named 'nope' (connected: x)"


def test_no_client_name_with_two_agents_is_a_control_error(controller: Controller) -> None:
    link, _, _ = register(controller, "b")
    register(controller, "a")
    f = run(link, controller.connections_start(10))
    assert isinstance(f, Failure) and f.check(ControlError)
    assert f.getErrorMessage() == "say which client: connected agents are a, b"


def test_negative_start_is_refused(controller: Controller) -> None:
    link, mind, _ = register(controller)
    f = run(link, controller.connections_start(-5, "x"))
    assert isinstance(f, Failure) and f.check(ControlError)
    assert f.getErrorMessage() == "connections_start: n: must be between 0 and 10000000, got -5"
    assert mind.applied == []


def test_negative_stop_is_refused(controller: Controller) -> None:
    link, mind, _ = register(controller)
    run(link, controller.connections_start(100, "x"))
    f = run(link, controller.connections_stop(-50, "x"))
    assert isinstance(f, Failure) and f.check(ControlError)
    assert f.getErrorMessage() == "connections_stop: n: must be between 0 and 10000000, got -50"
    assert controller.agents["x"].target == 100 and len(mind.applied) == 1


@pytest.mark.parametrize("call, message", [
    (("connections_start", (float("nan"), "x")), "connections_start: n: expected an integer, got nan"),
    (("connections_start", (10**9, "x")), "connections_start: n: must be between 0 and 10000000, got 1000000000"),
    (("connections_start", (True, "x")), "connections_start: n: expected an integer, got True"),
    (("connections_start", ("10", "x")), "connections_start: n: expected an integer, got '10'"),
    (("connections_start", (10, "bad name!")), "connections_start: client: expected a name of letters"),
    (("connections_start", ()), "connections_start(n, client=None): n is missing"),
    (("connections_start", (1, "x", 3)), "connections_start(n, client=None) takes at most 2 arguments, got 3"),
    (("set_rate", (float("nan"),)), "set_rate: rate: must be a finite number, got nan"),
    (("set_rate", (float("inf"),)), "set_rate: rate: must be a finite number, got inf"),
    (("set_rate", (-1.0,)), "set_rate: rate: must be > 0 and <= 1e+07, got -1"),
    (("set_rate", (0,)), "set_rate: rate: must be > 0 and <= 1e+07, got 0"),
    (("set_rate", (1e12,)), "set_rate: rate: must be > 0 and <= 1e+07, got 1e+12"),
    (("format_disk", ()), "no verb named 'format_disk'"),
])
def test_verbs_refuse_nan_negative_and_absurd_values(controller: Controller, call: Any, message: str) -> None:
    link, mind, _ = register(controller)
    name, args = call
    f = run(link, controller.call(name, args))
    assert isinstance(f, Failure) and f.check(ControlError), f
    assert f.getErrorMessage().startswith(message), f.getErrorMessage()
    assert "\n" not in f.getErrorMessage()
    assert mind.applied == [] and mind.rates == []


def test_keyword_arguments_are_checked_too(controller: Controller) -> None:
    link, mind, _ = register(controller)
    assert run(link, controller.call("connections_start", (), {"n": 5, "client": "x"})) == 5
    f = run(link, controller.call("connections_start", (5,), {"n": 6}))
    assert isinstance(f, Failure) and "n given twice" in f.getErrorMessage()
    f = run(link, controller.call("connections_start", (5,), {"force": True}))
    assert isinstance(f, Failure) and "no argument named 'force'" in f.getErrorMessage()


def test_control_error_crosses_pb_as_one_line(controller: Controller) -> None:
    register(controller)
    op = Link(controller)
    perspective = op.login(b"operator")
    f = op.wait(perspective.callRemote("connections_start", 5, "nope"))
    assert isinstance(f, Failure)
    assert f.getErrorMessage() == "no connected agent named 'nope' (connected: x)"


# ---------------------------------------------------------------- disconnects and re-registration


def test_agent_disconnect_marks_it_not_connected(controller: Controller) -> None:
    link, mind, _ = register(controller)
    run(link, controller.connections_start(300, "x"))
    mind.report["totals"]["open"] = 280
    run(link, controller.poll())
    link.drop()
    agent = controller.agents["x"]
    assert agent.connected is False and agent.mind is None and agent.losses == 1
    assert controller.clients()[0]["connected"] is False
    assert controller.clients()[0]["target"] == 300  # remembered for a re-registration
    assert any("agent x lost: its connection closed; it held 280 connections" in e for e in controller.events)
    assert controller.agents["x"].lost_reason == "its connection closed"
    f = controller.connections_start(1, "x")
    failures: list[Failure] = []
    f.addErrback(failures.append)
    assert failures and failures[0].check(ControlError)


def test_reregister_adopts_worker_targets(controller: Controller) -> None:
    link, mind, first = register(controller)
    run(link, controller.connections_start(300, "x"))
    link.drop()
    # The agent kept its workers (hub or network blip) and says what they hold.
    link2, mind2, answer = register(controller, worker_targets=[100, 250], workers=2, session=first["session"])
    assert answer["target"] == 350
    assert controller.agents["x"].worker_targets == [100, 250]
    assert controller.agents["x"].connected is True
    assert controller.clients()[0]["workers"] == 2
    run(link2, controller.connections_start(50, "x"))
    assert row_total(mind2.applied[-1]) == 400
    assert all(t >= c for t, c in zip(targets(mind2.applied[-1]), [100, 250]))
    assert mind.applied and len(mind.applied) == 1  # the old mind got nothing more


def test_register_twice_with_the_session_token_replaces_older_session(controller: Controller) -> None:
    link1, mind1, answer = register(controller)
    # The agent reconnects before the hub saw its old connection die: it proves
    # it is the same session with the token the hub gave it.
    link2, mind2, again = register(controller, session=answer["session"])
    assert again["session"] == answer["session"]
    assert any("registered again" in e for e in controller.events)
    # The older session ending must not mark the new one disconnected.
    link1.drop()
    assert controller.agents["x"].connected is True
    assert controller.agents["x"].losses == 0
    run(link2, controller.connections_start(10, "x"))
    assert mind2.applied and not mind1.applied


def test_wait_registered(controller: Controller) -> None:
    d = controller.wait_registered("x")
    assert not d.called
    register(controller)
    assert d.called
    assert controller.wait_registered("x").called


# ---------------------------------------------------------------- statistics


def test_count_and_stats_from_agent_reports(controller: Controller, tmp_path: Path) -> None:
    link, mind, _ = register(controller)
    mind.report["totals"].update(open=42, opened=50, closed=8, failures={"connect:ECONNREFUSED": 3})
    mind.report["connecting"] = 2
    assert run(link, controller.count_connections("x")) == 42
    stats = controller.stats()
    assert stats.client.open == 42
    assert stats.client.failure_total == 3
    assert stats.clients["x"].connecting == 2
    # No server supervisor in this controller (as with client.url): no server count, so no ghosts.
    assert stats.ghosts == 0 and stats.own_server is False
    assert stats.server.open == 0
    assert stats.rtt_ms == Percentiles(None, None, None, None)


def test_count_without_servers_is_zero(controller: Controller) -> None:
    d = controller.count_connections()
    assert d.result == 0


def test_tick_writes_a_timeline_record(clock: Clock, tmp_path: Path) -> None:
    tl = Timeline(tmp_path)
    controller = Controller(clock, make_cfg(), SECRET, timeline=tl)
    link, mind, _ = register(controller)
    mind.report["totals"]["open"] = 7
    clock.advance(3)
    run(link, controller.tick())
    tl.close()
    (record,) = list(read_timeline(tl.path))
    assert record.client.open == 7
    assert record.elapsed_s == 3.0
    assert any("registered" in e for e in record.events)
    assert record.rtt_window_ms is not None
    assert controller.events == []


def test_concurrent_polls_share_one_round(controller: Controller) -> None:
    link, mind, _ = register(controller)
    calls: list[int] = []
    original = mind.remote_report_packed

    def counting() -> list[str]:
        calls.append(1)
        return original()

    mind.remote_report_packed = counting  # type: ignore[method-assign]
    a, b = controller.poll(), controller.poll()
    link.pump.flush()
    assert a.called and b.called
    assert len(calls) == 1


def test_set_rate_reaches_connected_agents(controller: Controller) -> None:
    link, mind, _ = register(controller)
    run(link, controller.set_rate(123.0))
    assert mind.rates == [123.0]


def test_call_timeout_uses_the_given_clock(controller: Controller, clock: Clock) -> None:
    link, mind, _ = register(controller)
    # The agent never answers: the order fails after its timeout on our clock (the
    # first call starts workers, which may take ENSURE_TIMEOUT on a busy box).
    from connscale.control.orders import ENSURE_TIMEOUT

    d = controller.connections_start(10, "x")
    failures: list[Failure] = []
    d.addErrback(failures.append)
    clock.advance(ENSURE_TIMEOUT - 1)
    assert not failures
    clock.advance(2)
    assert failures and failures[0].check(defer.TimeoutError)


def test_concurrent_orders_do_not_lose_updates(controller: Controller) -> None:
    link, mind, _ = register(controller)
    a = controller.connections_start(100, "x")
    b = controller.connections_start(100, "x")
    link.pump.flush()
    assert a.called and b.called
    assert controller.agents["x"].target == 200


def test_a_second_agent_under_a_taken_name_is_refused(controller: Controller) -> None:
    first = Link(controller)
    p1 = first.login(b"agent:x", mind=FakeMind())
    answer = first.wait(p1.callRemote("register", {"host": "h1", "pid": 1, "budget": 19900}))
    assert answer["target"] == 0
    second = Link(controller)
    p2 = second.login(b"agent:x", mind=FakeMind())
    f = second.wait(p2.callRemote("register", {"host": "h2", "pid": 2, "budget": 19900}))
    assert isinstance(f, Failure)
    assert "agent name 'x' is taken by pid 1 on h1" in f.getErrorMessage()
    assert controller.agents["x"].info.pid == 1
    # Host and pid are public (clients() shows them): repeating them takes nothing over.
    third = Link(controller)
    p3 = third.login(b"agent:x", mind=FakeMind())
    f = third.wait(p3.callRemote("register", {"host": "h1", "pid": 1, "budget": 19900, "session": "ab" * 32}))
    assert isinstance(f, Failure) and "is taken by pid 1 on h1" in f.getErrorMessage()
    # Only the session token the hub gave the first agent does.
    fourth = Link(controller)
    p4 = fourth.login(b"agent:x", mind=FakeMind())
    again = fourth.wait(p4.callRemote("register", {"host": "h1", "pid": 1, "session": answer["session"]}))
    assert again["session"] == answer["session"]


@pytest.mark.parametrize("payload, problem", [
    ({"host": "h", "pid": "1"}, "AgentInfo.pid: expected an integer, got '1'"),
    ({"host": "h"}, "AgentInfo.pid: missing"),
    ({"host": "h", "pid": 1, "budget": -1}, "AgentInfo.budget: must be between 0"),
    ({"host": "h", "pid": 1, "worker_targets": [1] * 5000}, "AgentInfo.worker_targets: more than 4096 items"),
    ({"host": "h", "pid": 1, "source_ips": ["not-an-ip"]}, "AgentInfo.source_ips: [0]: expected an IP address"),
    ({"host": "x" * 300, "pid": 1}, "AgentInfo.host: longer than 255 characters"),
    ("not a mapping", "AgentInfo: expected a mapping"),
])
def test_a_malformed_registration_is_refused_at_the_boundary(controller: Controller, payload: Any,
                                                             problem: str) -> None:
    link = Link(controller)
    perspective = link.login(b"agent:x", mind=FakeMind())
    f = link.wait(perspective.callRemote("register", payload))
    assert isinstance(f, Failure)
    assert f.getErrorMessage().startswith(f"registration refused: {problem}"), f.getErrorMessage()
    assert not controller.agents.get("x") or not controller.agents["x"].connected


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "ünï", "a/b", "a\nb", "a:b"])
def test_agent_names_are_validated(controller: Controller, name: str) -> None:
    # Our own side refuses first; the hub refuses a hello that names one anyway (test_login).
    f = Link(controller).login(f"agent:{name}".encode(), mind=FakeMind())
    assert isinstance(f, Failure) and f.check(CredentialError), f
    assert "an agent name is 1-64 letters" in f.getErrorMessage() and "\n" not in f.getErrorMessage()
    assert controller.agents == {}


def test_routes_go_to_the_ports_this_hub_serves(clock: Clock) -> None:
    # A hub on every interface: agents dial where they reached the controller.
    controller = Controller(clock, make_cfg(server="0.0.0.0:9001-9002"), SECRET)
    link, mind, _ = register(controller, master_host="198.18.0.1")
    run(link, controller.connections_start(10, "x"))
    routes = mind.applied[-1][0].routes
    assert sorted({(r.host, r.port) for r in routes}) == [("198.18.0.1", 9001), ("198.18.0.1", 9002)]


def test_an_agent_configured_with_zero_workers_still_gets_one(controller: Controller) -> None:
    link, mind, _ = register(controller, configured_workers=0)
    assert run(link, controller.connections_start(10, "x")) == 10
    assert row_total(mind.applied[-1]) == 10 and len(mind.applied[-1]) == 1


def test_workers_follow_what_the_routes_can_carry(clock: Clock) -> None:
    # One route of 14000: a huge order gets one worker's worth, not fifty workers.
    controller = Controller(clock, make_cfg(server="127.0.0.1:8989"), SECRET)
    link, mind, _ = register(controller)
    assert run(link, controller.connections_start(1_000_000, "x")) == 14000
    assert mind.ensure_calls[-1] == 1


# ---------------------------------------------------------------- packed reports


def test_reports_and_orders_travel_packed(controller: Controller) -> None:
    mind = FakeMind()
    mind.report["totals"]["open"] = 42
    link, _, _ = register(controller, "p", mind=mind)
    run(link, controller.poll())
    assert mind.packed_calls == 1
    assert controller.stats().client.open == 42
    assert run(link, controller.connections_start(500, "p")) == 500
    assert row_total(mind.applied[-1]) == 500 and mind.applied[-1][0].routes


def test_a_peer_of_the_protocol_with_plain_reports_is_refused_at_login(controller: Controller) -> None:
    """Version 2 agents may answer only the plain `report`/`apply`, which are gone: the login's
    version gate refuses them before they register."""
    from connscale.control.login import PROTOCOL_VERSION

    link = Link(controller)
    root = link.wait(link.client_factory.getRootObject())
    answer = link.wait(root.callRemote("hello", PROTOCOL_VERSION - 1, "agent:old", "127.0.0.1:8790"))
    assert isinstance(answer, Failure) and "is not ours" in answer.getErrorMessage()
    assert controller.registry.agents == {}


def test_stats_packed_is_stats_as_json_text(controller: Controller) -> None:
    import json

    op = Link(controller)
    perspective = op.login(b"operator")
    plain = op.wait(perspective.callRemote("stats"))
    packed = op.wait(perspective.callRemote("stats_packed"))
    assert isinstance(packed, list) and all(isinstance(p, str) for p in packed)
    got = json.loads("".join(packed))
    assert got["client"] == plain["client"] and got["server"] == plain["server"]
    # The other side reads it back into the record, checked, as `connscale run` and `ctl watch` do.
    stats = Stats.from_wire(got)
    assert stats.schema == SCHEMA and stats.client == controller.stats().client


def test_a_million_connections_of_orders_reach_a_real_agent_mind_over_pb(clock: Clock) -> None:
    """bench/million.yaml's layout: 53 workers' orders with 640 routes each are ~940 KB of
    JSON, more than Banana carries in one string (640 KiB): they travel in pieces."""
    from connscale.records.packed import PIECE
    from connscale.control.agent import AgentMind, make_agent
    from tests.support.control import StubSupervisor

    sources = "127.0.0.2-127.0.0.41"  # 40 source IPs x 16 ports = 640 routes
    controller = Controller(clock, make_cfg(server="127.0.0.1:10000-10015", per_route_max=14000), SECRET)
    agent = make_agent(clock, parse_config({
        "client": {"master": "127.0.0.1:8790", "name": "big", "source_ips": sources, "per_route_max": 14000},
        "control": {"secret": SECRET.decode()}}))
    agent.supervisor = StubSupervisor([19900] * 53)  # type: ignore[assignment]
    agent.bounds.memory = lambda: 1 << 40

    class BigMind(FakeMind):
        def remote_ensure_workers(self, count: int, target: int | None = None) -> Any:
            self.ensure_calls.append(count)
            return AgentMind(agent).remote_ensure_workers(count, target)

        def remote_apply_packed(self, pieces: Any) -> Any:
            self.applied.append(pieces)
            return AgentMind(agent).remote_apply_packed(pieces)

    mind = BigMind()
    link, _, _ = register(controller, "big", mind=mind,
                          source_ips=[f"127.0.0.{i}" for i in range(2, 42)])
    assert run(link, controller.connections_start(1_000_000, "big")) == 1_000_000
    assert mind.ensure_calls == [53]
    pieces = mind.applied[-1]
    assert len(pieces) > 1 and all(len(p) <= PIECE for p in pieces)  # it would not fit in one
    orders = agent.supervisor.applied[-1]
    assert len(orders) == 53 and sum(o.target for o in orders) == 1_000_000
    assert all(len(o.routes) == 640 for o in orders)
