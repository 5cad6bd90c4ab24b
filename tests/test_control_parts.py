"""The controller's parts one at a time, with a fake clock and a fake agent mind:
registry (names, sessions, lost agents), orders (split, serialised, restored),
collect (reports checked, silent agents marked lost, the timeline record),
records (the PB boundary) and verbs (one list for the avatar, console and ctl).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet import defer, task
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from connscale.records.packed import pack, pack_pieces, unpack
from connscale.records.base import RecordError
from connscale.config.loader import parse_config
from connscale.control.collect import Collector, EventLog
from connscale.control.errors import ControlError
from connscale.control.orders import Orders
from connscale.control.records import AgentReport, RegisterAnswer
from connscale.control.registry import NAME_HOLD, NameHeld, Registry
from connscale.control.verbs import BY_CLI, CONSOLE_NAMES, VERBS
from connscale.host.observed import ObserverRow, ProcessRow, TargetRow
from connscale.metrics.records import Stats
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.timeline import Timeline, read_timeline
from connscale.net.routes import Route
from connscale.procs.records import ClientSpec, ServerSpec, WorkerHello, WorkerOrder, WorkerRow
from tests.support.minds import Mind, info, result


def cfg(server: str = "127.0.0.1:8989-8990"):  # type: ignore[no-untyped-def]
    interface, _, ports = server.rpartition(":")
    return parse_config({"server": {"interface": interface, "ports": ports}, "control": {"secret": "x" * 16}})


# ---------------------------------------------------------------- registry


def test_registry_issues_a_session_and_binds_the_name(registry: Registry) -> None:
    mind = Mind()
    agent, answer = registry.register("a1", mind, info())
    assert isinstance(answer, RegisterAnswer) and len(answer.session) == 64
    assert agent.connected and agent.session == answer.session and registry.live() == [agent]
    with pytest.raises(ControlError, match="agent name 'a1' is taken by pid 4242 on loadgen-1"):
        registry.register("a1", Mind(), info())  # the same host and pid prove nothing
    with pytest.raises(ControlError, match="is taken"):
        registry.register("a1", Mind(), info(session="0" * 64))
    assert not mind.broker.transport.aborted
    # The holder of the token reconnecting: the old connection is closed, the session kept.
    again, answer2 = registry.register("a1", Mind(), info(session=answer.session))
    assert again is agent and answer2.session == answer.session and mind.broker.transport.aborted


def test_registry_detach_from_an_older_session_is_ignored(registry: Registry, events: EventLog) -> None:
    old = Mind()
    _, answer = registry.register("a1", old, info())
    registry.register("a1", Mind(), info(session=answer.session))
    registry.detached("a1", old)
    assert registry.agents["a1"].connected and registry.agents["a1"].losses == 0


def test_registry_lost_agent_is_marked_with_its_reason_and_cut(registry: Registry, events: EventLog) -> None:
    mind = Mind()
    agent, _ = registry.register("a1", mind, info())
    registry.lost(agent, "no answer for 5 s")
    assert not agent.connected and agent.lost_reason == "no answer for 5 s" and agent.losses == 1
    assert mind.broker.transport.aborted
    assert any("agent a1 lost: no answer for 5 s" in e for e in events.take())
    # The name is kept for its owner (its token; a restarted agent keeps it in a file) for
    # NAME_HOLD seconds: another holder of the agent key is told to wait, and the owner is welcome.
    token = agent.session
    with pytest.raises(NameHeld, match=r"agent name 'a1' belongs to an agent that left 0 s ago .*try again in 300 s"):
        registry.register("a1", Mind(), info(pid=4343))
    again, answer = registry.register("a1", Mind(), info(pid=4343, session=token))
    assert again is agent and again.connected and answer.session == token


def test_registry_admits_a_report_within_what_one_agent_may_add(registry: Registry, clock: Clock) -> None:
    from connscale.control.registry import EVENT_BURST, ROW_SLACK

    agent, _ = registry.register("a1", Mind(), info(workers=2))
    row = {"index": 0, "alive": True}
    big = {"totals": {"open": 1}, "workers": [dict(row, index=i) for i in range(500)], "events": ["e"] * 16}
    reports = [registry.admit(agent, pack_pieces(big)) for _ in range(4)]
    assert all(len(r.workers) == 2 + ROW_SLACK for r in reports)  # the workers it runs, not 500
    kept = [e for r in reports for e in r.events if e == "e"]
    assert len(kept) == EVENT_BURST  # then 2 a second
    assert sum("the rest are dropped" in e for r in reports for e in r.events) == 1  # said once
    clock.advance(5)
    assert len([e for e in registry.admit(agent, pack_pieces(big)).events if e == "e"]) == 10
    # What the records refuse: failure keys that are not phase:cause, too many of them, control characters.
    for bad in ({"totals": {"failures": {"[/x]": 1}}}, {"totals": {"failures": {f"steady:c{i}": 1 for i in range(300)}}},
                {"events": ["\x1b[2J"]}):
        with pytest.raises(RecordError):
            registry.admit(agent, pack_pieces(bad))


def test_registry_bounds_new_names(registry: Registry, clock: Clock) -> None:
    from connscale.control.registry import NAME_BURST

    for i in range(int(NAME_BURST)):
        registry.register(f"n{i}", Mind(), info())
    with pytest.raises(NameHeld, match="too many new agent names at once"):
        registry.register("one-more", Mind(), info())
    clock.advance(1)
    assert registry.register("one-more", Mind(), info())[0].connected
    # Departed agents leave the live record after SHOW_DEPARTED; connected ones stay.
    from connscale.control.registry import SHOW_DEPARTED

    for agent in list(registry.live())[:-1]:
        registry.lost(agent, "gone")
    clock.advance(SHOW_DEPARTED + 1)
    assert [a.name for a in registry.shown()] == ["one-more"]


def test_stats_are_packed_below_what_a_peer_accepts() -> None:
    from connscale.control.controller import pack_bounded

    row = {"index": 0, "resources": {f"k{i}": "v" * 100 for i in range(40)}}
    stats = Stats.from_wire({"elapsed_s": 1.0, "client": {}, "server": {}, "phase": "",
                             "clients": {f"a{i}": {"open": i, "workers": [row] * 20} for i in range(20)}})
    small = Stats.from_wire(unpack(pack_bounded(stats, limit=10_000_000)))
    assert small.truncated == "" and len(small.clients["a1"].workers) == 20
    cut = Stats.from_wire(unpack(pack_bounded(stats, limit=100_000)))
    assert cut.truncated.startswith("worker rows left out")
    assert cut.clients["a1"].open == 1 and cut.clients["a1"].workers == ()
    assert sum(map(len, pack_bounded(stats, limit=100_000))) <= 100_000
    # Down to the totals: a bare record (~900 bytes with TLS's, the observers' and the cost's fields).
    big_observer = ObserverRow(connected=True, targets=(TargetRow("srv", processes=tuple(
        ProcessRow(pid, name="x" * 60) for pid in range(1, 400))),))
    stats = attrs.evolve(stats, observers={"o": big_observer})
    tiny = pack_bounded(stats, limit=1200)
    bare = Stats.from_wire(unpack(tiny))
    assert bare.clients == {} and bare.observers == {} and sum(map(len, tiny)) <= 1200
    assert bare.truncated == "clients and observers left out: too large to send"


def test_registry_frees_a_held_name_after_the_hold_or_when_released(registry: Registry, clock: Clock) -> None:
    agent, _ = registry.register("a1", Mind(), info())
    registry.lost(agent, "gone")
    clock.advance(NAME_HOLD + 1)
    again, answer = registry.register("a1", Mind(), info(pid=4343))
    assert again.connected and answer.session != ""
    registry.lost(again, "gone")
    registry.release("a1")  # client_stop: the operator frees it at once
    assert registry.register("a1", Mind(), info(pid=4444))[0].connected


def test_registry_adopts_what_a_returning_agent_holds(registry: Registry) -> None:
    agent, _ = registry.register("a1", Mind(), info())
    agent.worker_targets = [300]
    registry.detached("a1", agent.mind)
    # A restarted agent holding nothing gets the name's target back (restored by orders).
    agent2, answer = registry.register("a1", Mind(), info(pid=99, session=agent.session))
    assert answer.target == 300
    registry.detached("a1", agent2.mind)
    # One that kept its workers (a hub restart, a network cut) says what they hold.
    _, answer = registry.register("a1", Mind(), info(worker_targets=[100, 250], session=agent.session))
    assert answer.target == 350


def test_registry_pick(registry: Registry) -> None:
    with pytest.raises(ControlError, match="connected agents are none"):
        registry.pick(None)
    a, _ = registry.register("a", Mind(), info())
    assert registry.pick(None) is a
    registry.register("b", Mind(), info())
    with pytest.raises(ControlError, match="say which client: connected agents are a, b"):
        registry.pick(None)
    with pytest.raises(ControlError, match=r"no connected agent named 'c' \(connected: a, b\)"):
        registry.pick("c")


def test_registry_wait_registered(registry: Registry) -> None:
    d = registry.wait_registered("a1")
    assert not d.called
    registry.register("a1", Mind(), info())
    assert d.called and registry.wait_registered("a1").called


def test_agent_call_times_out_on_the_given_clock(registry: Registry, clock: Clock) -> None:
    agent, _ = registry.register("a1", Mind(report_packed=None), info())  # type: ignore[arg-type]
    d = agent.call(clock, "report_packed", timeout=3)
    clock.advance(3)
    f = result(d)
    assert isinstance(f, Failure) and f.check(defer.TimeoutError)


# ---------------------------------------------------------------- orders


def orders_for(registry: Registry, clock: Clock, events: EventLog, server: str = "127.0.0.1:8989-8990") -> Orders:
    return Orders(clock, cfg(server), registry, events.note)


def test_orders_split_and_send_typed_orders(registry: Registry, clock: Clock, events: EventLog) -> None:
    mind = Mind()
    agent, _ = registry.register("a1", mind, info())
    orders = orders_for(registry, clock, events)
    assert result(orders.change("a1", 25000, +1)) == 25000
    (sent,) = mind.orders()
    assert [o.target for o in sent] == [12500, 12500]
    assert sent[0].routes == (Route(None, "127.0.0.1", 8989, 7000), Route(None, "127.0.0.1", 8990, 7000))
    assert result(orders.change(None, 5000, -1)) == 20000
    assert result(orders.change(None, 10**6, -1)) == 0


def test_prepare_starts_the_final_targets_workers_and_opens_nothing(
        registry: Registry, clock: Clock, events: EventLog) -> None:
    running: list[int] = []

    def ensure_workers(n: int, target: int | None = None) -> list[int]:
        # As the agent's supervisor does: at least n, never fewer than run already.
        running[:] = [19900] * max(n, len(running))
        return list(running)

    mind = Mind(ensure_workers=ensure_workers)
    registry.register("a1", mind, info(source_ips=["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]))
    orders = orders_for(registry, clock, events)
    # 8 routes x client.per_route_max 14,000: 100,000 fit, in 6 workers of a 19,900 fd budget.
    assert result(orders.prepare("a1", 100_000)) == 6
    assert [m for m, _ in mind.calls] == ["ensure_workers"] and mind.calls[0][1] == (6, 100_000)
    assert registry.agents["a1"].target == 0 and mind.orders() == []
    # The first step's orders spread over every worker already running.
    assert result(orders.change("a1", 25_000, +1)) == 25_000
    (order,) = mind.orders()
    assert len(order) == 6 and sum(o.target for o in order) == 25_000
    assert max(o.target for o in order) - min(o.target for o in order) <= 1
    f = result(orders.prepare("nobody", 10))
    assert isinstance(f, Failure) and f.check(ControlError)


def test_orders_run_one_at_a_time_per_agent(registry: Registry, clock: Clock, events: EventLog) -> None:
    held: list[defer.Deferred[None]] = []

    def apply(rows: Any) -> defer.Deferred[None]:
        held.append(defer.Deferred())
        return held[-1]

    mind = Mind(apply_packed=apply)
    registry.register("a1", mind, info())
    orders = orders_for(registry, clock, events)
    first, second = orders.change("a1", 100, +1), orders.change("a1", 100, +1)
    assert len(held) == 1 and not first.called  # the second waits for the first
    held[0].callback(None)
    assert result(first) == 100 and len(held) == 2
    held[1].callback(None)
    assert result(second) == 200


def test_orders_refuse_an_agent_answering_nonsense(registry: Registry, clock: Clock, events: EventLog) -> None:
    registry.register("a1", Mind(ensure_workers=lambda n, target=None: ["lots"]), info())
    f = result(orders_for(registry, clock, events).change("a1", 10, +1))
    assert isinstance(f, Failure) and f.check(RecordError) and "expected an integer" in f.getErrorMessage()


def test_orders_restore_a_returning_agents_target(registry: Registry, clock: Clock, events: EventLog) -> None:
    mind = Mind()
    agent, _ = registry.register("a1", mind, info())
    agent.worker_targets = [70]
    orders_for(registry, clock, events).restore(agent)
    assert sum(o.target for o in mind.orders()[-1]) == 70


def test_orders_set_rate_reaches_every_agent(registry: Registry, clock: Clock, events: EventLog) -> None:
    a, b = Mind(), Mind()
    registry.register("a", a, info())
    registry.register("b", b, info())
    assert result(orders_for(registry, clock, events).set_rate(10.0)) is None
    assert ("set_rate", (10.0,)) in a.calls and ("set_rate", (10.0,)) in b.calls


# ---------------------------------------------------------------- collect


def report(open_: int = 0, **extra: Any) -> dict[str, Any]:
    return AgentReport(totals=Snapshot(open=open_, opened=open_), **extra).to_wire()


def test_collect_merges_reports_and_records_a_second(registry: Registry, clock: Clock, events: EventLog,
                                                     tmp_path: Path) -> None:
    registry.register("a", Mind(report_packed=lambda: report(7, events=("worker 1 lost",))), info())
    registry.register("b", Mind(report_packed=lambda: report(5)), info())
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, timeline=timeline)
    clock.advance(2)
    result(collector.tick())
    timeline.close()
    (record,) = list(read_timeline(timeline.path))
    assert record.client.open == 12 and record.elapsed_s == 2.0
    assert record.clients["a"].open == 7 and record.clients["a"].lost_reason == ""
    assert "agent a: worker 1 lost" in record.events
    assert collector.clients()[0]["name"] == "a"


def test_collect_times_each_poll_round_for_the_timeline(registry: Registry, clock: Clock, events: EventLog,
                                                        tmp_path: Path) -> None:
    """poll_ms: from a round's first call to its last answer, so the slowest agent sets it."""
    registry.register("fast", Mind(report_packed=lambda: report(1)), info())
    registry.register("slow", Mind(report_packed=lambda: task.deferLater(clock, 0.25, report, 3)), info())
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, timeline=timeline)
    d = collector.tick()
    clock.advance(0.25)
    result(d)
    timeline.close()
    (record,) = list(read_timeline(timeline.path))
    assert record.poll_ms == 250.0 and record.client.open == 4


def test_collect_refuses_a_malformed_report(registry: Registry, clock: Clock, events: EventLog) -> None:
    agent, _ = registry.register("a", Mind(report_packed=lambda: {"totals": {"open": -3}}), info())
    result(Collector(clock, registry, events).poll())
    assert agent.last is None
    assert any("agent a: report refused: AgentReport.totals: open: must be between 0" in e for e in events.take())


def test_collect_marks_a_silent_agent_lost_within_seconds(registry: Registry, clock: Clock,
                                                          events: EventLog) -> None:
    mind = Mind(report_packed=None)  # type: ignore[arg-type]  # it never answers: SIGSTOP, a cut cable
    agent, _ = registry.register("a", mind, info())
    collector = Collector(clock, registry, events, lost_after=5.0)
    for _ in range(6):
        collector.poll()
        clock.advance(1.0)
    assert not agent.connected and mind.broker.transport.aborted
    assert agent.lost_reason.startswith("no answer for 5 s")
    assert collector.stats().clients["a"].lost_reason == agent.lost_reason


def test_collect_does_not_blame_agents_for_its_own_stall(registry: Registry, clock: Clock,
                                                         events: EventLog) -> None:
    agent, _ = registry.register("a", Mind(report_packed=lambda: report(1)), info())
    collector = Collector(clock, registry, events, lost_after=5.0)
    for _ in range(3):
        result(collector.poll())
        clock.advance(1.0)
    clock.advance(40.0)  # the hub itself was stopped (SIGSTOP) for 40 s
    result(collector.poll())
    assert agent.connected and agent.lost_reason == ""
    assert any("the controller was stalled for 40s" in e for e in events.take())


def test_collect_keeps_an_agent_that_answers(registry: Registry, clock: Clock, events: EventLog) -> None:
    agent, _ = registry.register("a", Mind(report_packed=lambda: report(1)), info())
    collector = Collector(clock, registry, events, lost_after=5.0)
    for _ in range(30):
        result(collector.poll())
        clock.advance(1.0)
    assert agent.connected and agent.open() == 1


def test_concurrent_polls_share_one_round(registry: Registry, clock: Clock, events: EventLog) -> None:
    held: list[defer.Deferred[Any]] = []
    registry.register("a", Mind(report_packed=lambda: held.append(defer.Deferred()) or held[-1]), info())
    collector = Collector(clock, registry, events)
    first, second = collector.poll(), collector.poll()
    assert len(held) == 1
    held[0].callback(report(3))
    assert first.called and second.called


# ---------------------------------------------------------------- records


def test_records_round_trip() -> None:
    order = WorkerOrder(5, (Route("127.0.0.2", "127.0.0.1", 8989, 100), Route(None, "::1", 1, 0)))
    assert WorkerOrder.from_wire(order.to_wire()) == order
    assert order.to_wire() == {"target": 5, "routes": [["127.0.0.2", "127.0.0.1", 8989, 100], ["", "::1", 1, 0]]}
    for record in (info(source_ips=("10.0.0.1",), worker_targets=(1, 2)), RegisterAnswer(3, "ab" * 32),
                   WorkerHello(1, "client", 100), ClientSpec(rate=5.0), ServerSpec(ports=(1, 2)),
                   WorkerRow(index=0, pid=9, resources={"rss": 1})):
        assert type(record).from_wire(record.to_wire()) == record
    rep = AgentReport(totals=Snapshot(open=3, failures={"connect:EMFILE": 2}), workers=(WorkerRow(index=1),))
    assert AgentReport.from_wire(rep.to_wire()) == rep


@pytest.mark.parametrize("data, problem", [
    ({"target": -1}, "WorkerOrder.target: must be between 0"),
    ({"target": 1, "routes": [["", "h", 0, 1]]}, "port: must be between 1 and 65535, got 0"),
    ({"target": 1, "routes": [["300.1.1.1", "h", 1, 1]]}, "expected an IP address"),
    ({"target": 1, "routes": [["", "h", 1]]}, "a route is [source, host, port, quota]"),
    ({"target": 1, "routes": [["", "h", 1, 1]] * 20000}, "more than 16384 items"),
    ({"target": 1.5}, "expected an integer"),
    ({"routes": []}, "WorkerOrder.target: missing"),
    ({f"k{i}": 0 for i in range(100)} | {"target": 1}, "too many"),
])
def test_order_records_refuse_bad_payloads_in_one_line(data: Any, problem: str) -> None:
    with pytest.raises(RecordError) as e:
        WorkerOrder.from_wire(data)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_loose_fields_keep_every_check_on_their_fast_path() -> None:
    """Exact numbers skip the long way through `loose` and `_plain` (a hub reads 25,000
    worker rows a second from 500 agents); everything else is checked as before."""
    row = {"index": 0, "alive": True, "resources": {"rss": 1.5, "n": 3, "ok": True, "tags": ["a", None]},
           "load": {"cpu": 0.25, "nofile": 20000}}
    parsed = WorkerRow.from_wire(row)
    assert parsed.to_wire()["resources"] == row["resources"] and parsed.to_wire()["load"] == row["load"]
    assert type(parsed.to_wire()["resources"]["ok"]) is bool
    with pytest.raises(RecordError, match="WorkerRow.load: expected text, got"):
        WorkerRow.from_wire({"index": 0, "load": {7: 1}})
    with pytest.raises(RecordError, match="WorkerRow.load: more than 256 values"):
        WorkerRow.from_wire({"index": 0, "load": {f"k{i}": i for i in range(300)}})
    with pytest.raises(RecordError, match="WorkerRow.resources: unexpected"):
        WorkerRow.from_wire({"index": 0, "resources": {"x": b"bytes"}})


def test_specs_refuse_nonsense() -> None:
    with pytest.raises(RecordError, match="ClientSpec.rate: must be a finite number"):
        ClientSpec.from_wire({"rate": float("nan")})
    with pytest.raises(RecordError, match="ServerSpec.framing: expected one of line, raw"):
        ServerSpec.from_wire({"framing": "xml"})
    with pytest.raises(RecordError, match="WorkerRow.resources: nested deeper than 4"):
        WorkerRow.from_wire({"index": 0, "resources": {"a": {"b": {"c": {"d": {"e": 1}}}}}})


# ---------------------------------------------------------------- verbs


def test_one_verb_list_for_avatar_console_and_ctl() -> None:
    from connscale.app.cli import LOCAL_SUBCOMMANDS, ctl_parser
    from connscale.control.controller import Controller
    from connscale.control.hub_console import console_namespace

    controller = Controller(Clock(), cfg(), b"x" * 16)
    namespace = console_namespace(controller)
    subcommands = ctl_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for verb in VERBS:
        assert callable(getattr(controller, f"op_{verb.name}")), verb.name
        assert verb.name in namespace and namespace[verb.name].__doc__.startswith(verb.signature())
        # One spelling for the console and ctl; the other one is an alias of both.
        assert verb.name in subcommands and all(name in subcommands for name in verb.cli_names)
        if verb.console_alias:
            assert namespace[verb.console_alias] is namespace[verb.name]
    assert set(subcommands) == set(BY_CLI) | LOCAL_SUBCOMMANDS  # `watch` polls `stats` itself
    assert set(namespace) == set(CONSOLE_NAMES) | {"stats_raw"}
    # Both spellings are in both helps.
    usage = ctl_parser().format_help()
    assert "connections_start (start)" in usage and "client_start (client-start)" in usage
    from connscale.control.console import wrap_namespace

    listing = repr(wrap_namespace(namespace)["help"])
    assert "connections_start(n, client=None)" in listing and "start(n, client=None)" in listing
    assert "(alias: start)" in namespace["connections_start"].__doc__


def test_console_verbs_are_checked_by_the_controller() -> None:
    from connscale.control.controller import Controller
    from connscale.control.hub_console import console_namespace

    namespace = console_namespace(Controller(Clock(), cfg(), b"x" * 16))
    f = result(namespace["connections_start"](float("nan"), "a"))
    assert isinstance(f, Failure) and f.getErrorMessage() == "connections_start: n: expected an integer, got nan"
    assert result(namespace["clients"]()) == []


def test_worker_snapshots_are_checked_where_they_enter_the_parent() -> None:
    from connscale.procs.records import check_worker_snapshot
    from connscale.procs.supervisor import Slot, Supervisor

    good = Snapshot(open=3, opened=3, failures={"connect:EMFILE": 1}).to_dict()
    good.update(resources={"rss": 1.5}, load={"cpu": 0.2}, established=3, connecting=0, pending=0)
    assert check_worker_snapshot(good) is good
    for bad, problem in [({"open": -1}, "open: must be between 0"), ({"failures": {"x": "many"}}, "failures"),
                         ({"connecting": 1.5}, "expected an integer"), ("junk", "expected a mapping"),
                         ({"resources": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "nested deeper")]:
        with pytest.raises(RecordError, match=problem):
            check_worker_snapshot(bad)
    supervisor = Supervisor(Clock(), "client", ClientSpec(), "t")
    slot = Slot(0)
    supervisor.slots.append(slot)
    supervisor._got(pack({"open": "lots"}), slot)
    assert slot.last is None and slot.answered_at == 0.0  # junk is no answer
    supervisor._got(pack(good), slot)
    assert slot.last == good and supervisor.totals().open == 3


def test_collect_carries_lost_server_workers_in_stats_and_each_once_in_the_timeline(
        registry: Registry, clock: Clock, events: EventLog, tmp_path: Path) -> None:
    from connscale.procs.records import WorkerLoss
    from connscale.procs.supervisor import Supervisor

    servers = Supervisor(clock, "server", ServerSpec(interface="127.0.0.1", ports=(8989,)), "hub")
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, servers=servers, timeline=timeline)
    clock.advance(3)
    loss = WorkerLoss(worker="hub-server-worker-1", side="server", pid=4242, how="was killed by signal 9 (SIGKILL)",
                      connections=511, t=clock.seconds())
    servers.losses.append(loss)
    result(collector.tick())
    clock.advance(1)
    result(collector.tick())
    timeline.close()
    first, second = list(read_timeline(timeline.path))
    assert first.worker_losses == (attrs.evolve(loss, elapsed_s=3.0),) and second.worker_losses == ()
    # stats (what `connscale run` puts in summary.json) has every loss so far.
    assert collector.stats().worker_losses == first.worker_losses
    assert WorkerLoss.from_wire(loss.to_wire()) == loss


def test_collect_carries_lost_client_workers_from_agent_reports(
        registry: Registry, clock: Clock, events: EventLog, tmp_path: Path) -> None:
    from connscale.diagnose.verdict import losses_line
    from connscale.procs.records import WorkerLoss

    loss = WorkerLoss(worker="a-client-worker-2", side="client", pid=777, how="was killed by signal 9 (SIGKILL)",
                      connections=900, t=55.0)   # the agent's clock: not ours
    reports = [report(7, losses=(loss,)), report(6)]
    registry.register("a", Mind(report_packed=lambda: reports.pop(0) if reports else report(6)), info())
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, timeline=timeline)
    clock.advance(4)
    result(collector.tick())
    clock.advance(1)
    result(collector.tick())
    timeline.close()
    first, second = list(read_timeline(timeline.path))
    expected = attrs.evolve(loss, agent="a", elapsed_s=4.0)
    assert first.worker_losses == (expected,) and second.worker_losses == ()
    assert collector.stats().worker_losses == (expected,)
    assert losses_line([expected]) == ("a client worker (pid 777) on agent a was killed by signal 9 (SIGKILL) "
                                       "at 4 s; 900 connections were lost with it")
