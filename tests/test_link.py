"""link.HubLink (ClientService + login on every connect + keepalive) and the agent's
own logic (orders checked against its bounds, the grace period without a hub),
with a fake clock and in-memory PB connections to a real Controller.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.test import iosim

from connscale.records.packed import pack_pieces
from connscale.config.loader import parse_config
from connscale.control.agent import AgentMind, make_agent
from connscale.control.auth import Credentials
from connscale.control.bounds import WORKER_MEMORY, OrderBounds
from connscale.control.controller import Controller
from connscale.control.errors import ControlError, StartError
from connscale.control.link import HubLink
from connscale.control.records import AgentInfo, AgentReport
from connscale.net.routes import Route
from connscale.procs.records import WorkerOrder
from tests.support.control import SECRET, FakeMind, StubSupervisor, agent_info, tls_client


class MemoryEndpoint:
    """Connects ClientService's factory to the controller's control port in memory."""

    def __init__(self, controller: Controller) -> None:
        self.factory = controller.server_factory()
        self.pumps: list[iosim.IOPump] = []
        self.refuse = False
        self.connects = 0

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        self.connects += 1
        if self.refuse:
            return defer.fail(ConnectionRefusedError("connection refused"))
        server = self.factory.buildProtocol(None)
        client = tls_client(factory).buildProtocol(None)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, isServer=True, peerAddress=IPv4Address("TCP", "127.0.0.1", 5)),
            client, iosim.FakeTransport(client, isServer=False), greet=False)
        self.pumps.append(pump)
        return defer.succeed(client.wrappedProtocol)  # as wrapClientTLS gives it: the broker

    def flush(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            for pump in self.pumps:
                pump.flush()


def agent_link(clock: Clock, endpoint: MemoryEndpoint, secret: bytes = SECRET, **kw: Any) -> tuple[HubLink, dict]:
    seen: dict[str, list[Any]] = {"login": [], "lost": [], "refused": []}
    session: dict[str, str] = {"token": ""}

    @defer.inlineCallbacks
    def register(perspective: Any):  # type: ignore[no-untyped-def]
        answer = yield perspective.callRemote("register", agent_info(session=session["token"]))
        session["token"] = answer["session"]
        seen["login"].append(answer)

    link = HubLink(clock, ("127.0.0.1", 8790), "agent:x", Credentials.from_secret(secret), mind=FakeMind(),
                   on_login=register, on_lost=seen["lost"].append, on_refused=seen["refused"].append,
                   endpoint=endpoint, **kw)
    return link, seen


def test_logs_in_registers_and_comes_back_with_its_session(clock: Clock, controller: Controller) -> None:
    endpoint = MemoryEndpoint(controller)
    link, seen = agent_link(clock, endpoint)
    link.startService()
    endpoint.flush()
    assert len(seen["login"]) == 1 and link.perspective is not None
    assert controller.agents["x"].connected
    token = seen["login"][0]["session"]
    # The connection drops: ClientService reconnects after its backoff, we log in
    # again and the hub recognises the session.
    endpoint.pumps[-1].client.transport.loseConnection()
    endpoint.flush()
    assert seen["lost"] and link.perspective is None and not controller.agents["x"].connected
    clock.advance(20)
    endpoint.flush()
    assert len(seen["login"]) == 2 and seen["login"][1]["session"] == token
    assert controller.agents["x"].connected and link.losses == 1
    link.stopService()


def test_a_silent_hub_is_left_and_found_again(clock: Clock, controller: Controller) -> None:
    endpoint = MemoryEndpoint(controller)
    link, seen = agent_link(clock, endpoint, keepalive=2.0, keepalive_timeout=6.0)
    link.startService()
    endpoint.flush()
    assert len(seen["login"]) == 1
    for _ in range(3):  # answered keepalives keep the link
        clock.advance(2.0)
        endpoint.flush()
    assert link.losses == 0
    # The hub stops answering (SIGSTOP, a cut cable): nothing is pumped.
    for _ in range(4):
        clock.advance(2.0)
    endpoint.pumps[-1].flush()  # delivers our abort
    assert link.losses == 1 and seen["lost"]
    clock.advance(20)
    endpoint.flush()
    assert len(seen["login"]) == 2


def test_a_hub_without_our_secret_is_final(clock: Clock, controller: Controller) -> None:
    endpoint = MemoryEndpoint(controller)
    link, seen = agent_link(clock, endpoint, secret=b"another-secret")
    link.startService()
    endpoint.flush()
    clock.advance(0)
    assert seen["refused"] and "wrong control secret" in seen["refused"][0]
    clock.advance(120)
    endpoint.flush()
    assert endpoint.connects == 1 and seen["login"] == []  # no retry: a wrong secret stays wrong


def test_unreachable_hub_is_retried_with_backoff(clock: Clock, controller: Controller) -> None:
    endpoint = MemoryEndpoint(controller)
    endpoint.refuse = True
    link, seen = agent_link(clock, endpoint)
    link.startService()
    for _ in range(40):
        clock.advance(1)
    # Backing off (0.5 s doubling to 15 s): a handful of attempts in 40 s, not 80.
    assert 4 <= endpoint.connects <= 10
    endpoint.refuse = False
    clock.advance(16)
    endpoint.flush()
    assert len(seen["login"]) == 1
    link.stopService()


# ---------------------------------------------------------------- the agent


def agent_cfg(**client: Any):  # type: ignore[no-untyped-def]
    data = {"client": {"master": "127.0.0.1:8790", "name": "a1", "source_ips": "127.0.0.2-127.0.0.3",
                       "hub_grace": 30, **client},
            "control": {"secret": SECRET.decode()}}
    return parse_config(data)


@pytest.fixture
def agent(clock: Clock):  # type: ignore[no-untyped-def]
    a = make_agent(clock, agent_cfg())
    a.supervisor = StubSupervisor([19900, 19900])  # type: ignore[assignment]
    a.bounds.memory = lambda: 1 << 40
    return a


def order(target: int, *routes: Route) -> dict[str, Any]:
    return WorkerOrder(target, routes).to_wire()


def test_agent_obeys_orders_within_its_bounds(agent: Any) -> None:
    mind = AgentMind(agent)
    ok = Route("127.0.0.2", "127.0.0.1", 8989, 100)
    mind.remote_apply_packed(pack_pieces([order(10, ok), order(5, ok)]))
    assert [o.target for o in agent.supervisor.applied[-1]] == [10, 5]


@pytest.mark.parametrize("orders, problem", [
    ([order(10, Route("127.0.0.2", "10.9.9.9", 80, 100))], "route to 10.9.9.9:80: not the hub's servers"),
    ([order(10, Route("127.0.0.9", "127.0.0.1", 8989, 100))], "route from 127.0.0.9: not one of its source"),
    ([order(30000)], "30000 connections for worker 1: its fd budget is 19900"),
    ([order(1)] * 3, "orders for 3 workers: it runs 2"),
    ([{"target": -1}], "agent refused apply: [0]: WorkerOrder.target: must be between 0"),
])
def test_agent_refuses_orders_outside_its_bounds(agent: Any, orders: list, problem: str) -> None:
    with pytest.raises(ControlError) as e:
        AgentMind(agent).remote_apply_packed(pack_pieces(orders))
    assert problem in str(e.value) and "\n" not in str(e.value)
    assert agent.supervisor.applied == []


def test_agent_refuses_workers_the_target_or_memory_cannot_justify(agent: Any) -> None:
    mind = AgentMind(agent)
    with pytest.raises(ControlError, match="agent refused 50 workers: 1000 connections need 1"):
        mind.remote_ensure_workers(50, 1000)
    with pytest.raises(ControlError, match="between 1 and 256, got 257"):
        mind.remote_ensure_workers(257, 257 * 19000)
    # Without its target a hub could ask for the cap: the target is required.
    with pytest.raises(ControlError, match="agent refused ensure_workers: the target the workers are for is required"):
        mind.remote_ensure_workers(200)
    assert agent.supervisor.ensured == []
    agent.bounds.memory = lambda: 3 * WORKER_MEMORY
    with pytest.raises(ControlError, match="agent refused 4 more workers: they need about 160 MB"):
        mind.remote_ensure_workers(6, 6 * 19000)
    mind.remote_ensure_workers(5, 5 * 18905)
    assert agent.supervisor.ensured == [5]


def test_bounds_check_the_workers_against_their_target_and_the_cap() -> None:
    bounds = OrderBounds(19900, "auto", [], ["127.0.0.1"], memory=lambda: None)
    bounds.workers(200, 200 * 19000, 0)
    with pytest.raises(ControlError, match="agent refused 200 workers: 1000 connections need 1"):
        bounds.workers(200, 1000, 0)
    with pytest.raises(ControlError):
        bounds.workers(300, 300 * 19000, 0)


def test_agent_stops_its_load_when_the_hub_stays_away(agent: Any, clock: Clock) -> None:
    agent.supervisor.slots[0].target = 700
    agent._hub_lost("gone")
    clock.advance(29)
    assert agent.supervisor.applied == []  # within the grace period nothing changes
    agent._hub_lost("still gone")  # one grace period, not one per lost connection
    clock.advance(1)
    assert [o.target for o in agent.supervisor.applied[-1]] == [0, 0]
    assert any("no hub for 30 s: load stopped (700 connections)" in e for e in agent.supervisor.events)


def test_a_hub_giving_orders_ends_the_grace_period(agent: Any, clock: Clock) -> None:
    agent.supervisor.slots[0].target = 700
    agent._hub_lost("gone")
    clock.advance(10)
    AgentMind(agent).remote_apply_packed(pack_pieces([order(700), order(0)]))  # a hub is back and in charge
    clock.advance(60)
    assert [[o.target for o in a] for a in agent.supervisor.applied] == [[700, 0]]


def test_agent_says_who_it_is_in_records(agent: Any) -> None:
    info = agent.info("ab" * 32)
    assert AgentInfo.from_wire(info.to_wire()) == info
    assert info.source_ips == ("127.0.0.2", "127.0.0.3") and info.session == "ab" * 32


def test_agent_report_is_a_valid_record(clock: Clock) -> None:
    a = make_agent(clock, agent_cfg())
    report = a.report()
    assert AgentReport.from_wire(report.to_wire()) == report


def test_agent_without_a_secret_exits_with_one_line(clock: Clock, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("CONNSCALE_SECRET", raising=False)
    cfg = parse_config({"client": {"master": "127.0.0.1:8790", "name": "a1"}})
    with pytest.raises(StartError) as e:
        make_agent(clock, cfg)
    assert str(e.value).startswith("no control secret") and "\n" not in str(e.value)


def test_agent_runs_on_an_agent_key_alone(clock: Clock, tmp_path: Any) -> None:
    key = tmp_path / "agent.key"
    key.write_bytes(Credentials.from_secret(SECRET).agent_line(b"s" * 16, "a1") + b"\n")
    key.chmod(0o600)
    cfg = parse_config({"client": {"master": "127.0.0.1:8790", "name": "a1"},
                        "control": {"secret_file": str(key)}})
    assert make_agent(clock, cfg).link is not None
