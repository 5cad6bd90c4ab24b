"""The observer's logic on fakes: its configuration, the hub's side (registration apart from
the agents, one question at a time, stale rows, events timed on the hub's clock), the
server-side walls and the verdict's words, the memory table, /metrics and the live view.
The real processes are in tests/test_observe_e2e.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from connscale.app.live import observer_rows
from connscale.records.packed import pack_pieces
from connscale.config.loader import ConfigError, parse_config
from connscale.control.controller import AgentAvatar, Controller
from connscale.control.launch import remote_observer_argv
from connscale.diagnose.incidents import IncidentDetector
from connscale.diagnose.memory import memory_table, per_second
from connscale.diagnose.observed import ServerWatch, observed_rows, server_side
from connscale.diagnose.verdict import explain
from connscale.diagnose.walls import name_wall
from connscale.diagnose.window import Context, Window
from connscale.diagnose.records import MemoryMoment, MemoryRow, MemoryServer, MemoryTable, Summary
from connscale.host.observed import (
    HostRow,
    ListenerRow,
    ObservedEvent,
    ObserverReport,
    ObserverRow,
    ProcessRow,
    TargetEvent,
    TargetRow,
)
from connscale.host.watch import TargetSpec
from connscale.metrics.prometheus import TimelineCollector, registry_for
from connscale.metrics.records import AgentRow, Incident, Stats
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.workers import WorkerRow
from tests.support.minds import Mind, info

SECRET = "s" * 16


# -- configuration ------------------------------------------------------------------------------

def test_observe_section_and_clients_entry():
    cfg = parse_config({"observe": {"name": "redis-server"}, "clients": {"srv": {"host": "h", "observe": 4242}}})
    assert cfg.observe.name == "redis-server" and cfg.observe.pid is None
    assert cfg.clients["srv"].observe == "4242"
    with pytest.raises(ConfigError) as e:
        parse_config({"observe": {"pid": 1, "name": "x"}})
    assert str(e.value) == "observe: give pid or name, not both"
    with pytest.raises(ConfigError) as e:
        parse_config({"observe": {"name": "../etc/x", "pid": -3}})
    assert str(e.value).splitlines() == [
        "observe.name: expected a process name like redis-server, got '../etc/x'",
        "observe.pid: must be between 1 and 4194304, got -3"]


def test_target_spec_from_the_command_line():
    assert TargetSpec.parse("4242") == TargetSpec(pid=4242)
    assert TargetSpec.parse("redis-server").how == "name"
    for bad in ("", "a/b"):
        with pytest.raises(ValueError):
            TargetSpec.parse(bad)


def test_ssh_launch_of_an_observer():
    cfg = parse_config({"clients": {"srv": {"host": "10.0.0.9", "observe": "nginx", "python": "/opt/py"}}})
    argv = remote_observer_argv(cfg.clients["srv"], "10.0.0.1:8790")
    assert argv[:4] == ["/opt/py", "-m", "connscale", "observe"]
    assert argv[-2:] == ["--name", "nginx"] and "--lifeline" in argv and "--secret-file" in argv
    assert argv[argv.index("--label") + 1] == "srv"


# -- rows as an observer sends them ---------------------------------------------------------------

def target(fds: int = 100, nofile: int = 5000, pid: int = 41, queue: int = 0, backlog: int = 511,
           established: int = 90, alive: bool = True, rss: int = 10 << 20, label: str = "redis-server") -> TargetRow:
    return TargetRow(label, "name", pid, alive,
                     (ProcessRow(pid, 1, "redis-server", rss=rss, pss=rss // 2, fds=fds, nofile_soft=nofile,
                                 nofile_hard=nofile),) if alive else (),
                     (ListenerRow("127.0.0.1", 6379, queue, backlog, pid, established),) if alive else ())


def host(**kw: Any) -> HostRow:
    data = dict(hostname="srv", tcp_inuse=100, tcp_mem_pages=10, tcp_mem=(1000, 2000, 3000),
                socket_slab={"TCP": 1 << 20}, mem_available=8 << 30, conntrack_max=262144, conntrack_count=0,
                somaxconn=4096)
    data.update(kw)
    return HostRow(**data)


def observers(t: TargetRow, h: HostRow | None = None) -> dict[str, ObserverRow]:
    report = ObserverReport((t,), h or host())
    return {"server": ObserverRow.of(report, connected=True, login_host="srv", lost_reason="", stale_s=0.0)}


def stats(elapsed_s: float = 1.0, open_: int = 0, **fields: Any) -> Stats:
    """A stats record or timeline line with the fields a test gives."""
    return Stats(elapsed_s=elapsed_s, client=Snapshot(open=open_), server=Snapshot(), **fields)


def gone_event(kind: str, text: str) -> ObservedEvent:
    return ObservedEvent(kind, "redis-server", 41, observer="server", text=text)


# -- the hub's side -------------------------------------------------------------------------------

@pytest.fixture
def controller(clock: Clock) -> Controller:
    """A controller 1000 s into its life, with this module's secret."""
    clock.advance(1000)
    return Controller(clock, parse_config({"control": {"secret": SECRET}}), SECRET.encode())


def test_an_observer_registers_apart_from_the_agents_and_its_rows_reach_the_line(controller):
    reports = [ObserverReport((target(),), host(), (TargetEvent("restarted", "redis-server", 41, 57, "redis-server"),))]
    mind = Mind(report_packed=lambda: pack_pieces(reports[-1].to_wire()))
    avatar = AgentAvatar(controller, "obs", mind)
    answer = avatar.perspective_observe(info(host="srv").to_wire())
    assert answer["target"] == 0 and answer["session"]
    assert controller.clients() == []            # not a client: no connections, no target
    assert "observer obs registered from srv" in " ".join(controller.events)
    lines: list[Stats] = []
    controller.collector.listeners.append(lines.append)
    controller.reactor.advance(5)
    controller.tick()
    row = lines[-1].observers["obs"]
    assert row.connected and row.stale_s == 0.0 and row.login_host == "srv"
    assert row.targets[0].established == 90 and row.host == host()
    (event,) = lines[-1].target_events
    assert event.text == "redis-server (pid 41) exited at 5 s; restarted as pid 57"
    assert (event.observer, event.elapsed_s, event.kind, event.new_pid) == ("obs", 5.0, "restarted", 57)
    assert "observer obs: redis-server (pid 41) exited at 5 s; restarted as pid 57" in lines[-1].events
    # The line goes to JSON and back whole, the observer's rows and events with it.
    assert Stats.from_json(lines[-1].to_json()) == lines[-1]
    # The next line carries no old events, and a quiet observer's row goes stale with its age.
    reports.append(ObserverReport((target(),), host()))
    mind.handlers["report_packed"] = lambda: defer.Deferred()  # stops answering
    controller.reactor.advance(2)
    controller.tick()
    controller.reactor.advance(1)
    assert lines[-1].target_events == () and (lines[-1].observers["obs"].stale_s or 0) > 0
    assert controller.stats().target_events[0].new_pid == 57
    # A second avatar detaching is the observer's, not an agent's.
    avatar.detached()
    assert not controller.observers.registry.agents["obs"].connected


def test_an_observers_own_cpu_and_rss_count_in_connscales_cost(controller):
    """The observer is one of connscale's processes: its report carries its resources as an
    agent's does, and the hub counts it in every line's `cost` (kind `observers`) while connected."""
    cpu = [1.0]

    def report() -> Any:
        own = {"cpu_user_s": cpu[0] * 0.75, "cpu_system_s": cpu[0] * 0.25, "rss_bytes": 30e6}
        return pack_pieces(ObserverReport((target(),), host(), resources=own).to_wire())

    mind = Mind(report_packed=report)
    avatar = AgentAvatar(controller, "obs", mind)
    avatar.perspective_observe(info(host="srv").to_wire())
    lines: list[Stats] = []
    controller.collector.listeners.append(lines.append)
    for _ in range(2):
        controller.reactor.advance(2)
        controller.tick()
        cpu[0] += 1.0                     # one CPU second in two: half a core
    own = lines[-1].cost.by_kind["observers"] if lines[-1].cost is not None else None
    assert own is not None and own.processes == 1 and own.rss_bytes == 30_000_000 and own.cores == 0.5
    avatar.detached()
    controller.reactor.advance(2)
    controller.tick()
    assert lines[-1].cost is not None and "observers" not in lines[-1].cost.by_kind


# -- walls on the server's side ----------------------------------------------------------------------

def test_a_server_at_its_file_limit_is_named_with_its_pid_limit_and_fix():
    rows = observed_rows(stats(observers=observers(target(fds=4975, nofile=5000))))
    finding = server_side(rows)
    assert (finding.wall, finding.side) == ("fd_process", "server")
    assert "redis-server (pid 41) reached its open-file limit (Max open files 5,000)" in finding.headline
    assert "read by the observer from /proc/41/limits" in finding.evidence[0]
    fixes = " ".join(finding.fix)
    assert "LimitNOFILE=" in fixes and "ulimit -n" in fixes and "worker_rlimit_nofile" not in fixes
    assert "prlimit --pid 41" in fixes
    nginx = server_side(observed_rows(stats(observers=observers(target(fds=4975, nofile=5000, label="nginx")))))
    assert nginx is not None and any("worker_rlimit_nofile 65536;" in f for f in nginx.fix)  # nginx's own key
    # What the clients see (connections closed) is explained by it...
    w = Window(open=4968, failures={"first_ping:closed_by_peer": 10}, server_wall=finding)
    assert name_wall("first_ping:closed_by_peer", w, Context()) is finding
    # ...but a client's own wall stays the client's.
    assert name_wall("connect:EADDRNOTAVAIL", w, Context()).wall == "ephemeral_ports"
    assert server_side(observed_rows(stats(observers=observers(target(fds=4000, nofile=5000))))) is None


def test_a_servers_accept_emfile_counted_before_the_observer_reads_its_limit_is_named_by_the_observer():
    """A server worker counts accept()'s EMFILE the second it happens; the observer's reading of
    that process's fds may land a second later. The wall is named in the observer's words (pid,
    limit, /proc) whichever arrives first, not in the counts' vaguer ones."""
    detector = IncidentDetector()

    def line(t: float, fds: int, emfile: int) -> Stats:
        return Stats(elapsed_s=t, client=Snapshot(open=1990), server=Snapshot(open=1990, failures={"connect:EMFILE": emfile}),
                     observers=observers(target(fds=fds, nofile=2000)))

    assert detector.observe(line(1.0, 1500, 0)) == []
    assert detector.observe(line(2.0, 1500, 40)) == []   # the counts alone: wait for the observer
    opened = detector.observe(line(3.0, 1995, 90))
    assert [(i.wall, i.side) for i in opened] == [("fd_process", "server")]
    assert "redis-server (pid 41) reached its open-file limit (Max open files 2,000)" in opened[0].headline
    # Without an observer the counts name it at once, as before.
    alone = IncidentDetector()
    alone.observe(Stats(elapsed_s=1.0, client=Snapshot(), server=Snapshot()))
    opened = alone.observe(Stats(elapsed_s=2.0, client=Snapshot(), server=Snapshot(failures={"connect:EMFILE": 40})))
    assert [(i.wall, i.side) for i in opened] == [("fd_process", "server")]
    assert "a server worker (accept) ran out of file descriptors" in opened[0].headline


@pytest.mark.parametrize("t, h, wall, words", [
    (target(queue=511), host(), "accept_queue", "accept queue is full on port 6379 (511 of 511)"),
    (target(), host(conntrack_count=262000), "conntrack", "connection-tracking table is full"),
    (target(), host(tcp_mem_pages=2500), "memory", "TCP buffer memory is under pressure"),
    (target(), host(mem_available=100 << 20), "memory", "running out of memory"),
])
def test_other_server_side_walls(t, h, wall, words):
    finding = server_side(observed_rows(stats(observers=observers(t, h))))
    assert finding.wall == wall and words in finding.headline and finding.fix


def test_the_detector_opens_a_lasting_server_wall_and_the_server_gone():
    detector = IncidentDetector()
    opened = []
    for second in range(3):
        opened += detector.observe(stats(float(second), 4968, observers=observers(target(fds=4990))))
    assert [(i.wall, i.side, i.trigger) for i in opened] == [("fd_process", "server", "observer")]
    gone = stats(4.0, target_events=(gone_event("exited", "redis-server (pid 41) exited at 4 s"),),
                 observers=observers(target(alive=False)))
    (incident,) = detector.observe(gone)
    assert incident.wall == "server_down" and "redis-server (pid 41) exited at 4 s" in incident.headline
    watch = ServerWatch()
    assert watch.observe(stats(), ()) == []


def test_the_verdict_names_the_server_event_and_the_side():
    events = [gone_event("exited", "redis-server (pid 41) exited at 41 s; restarted as pid 57"),
              gone_event("child_exited", "a worker's churn is not the server going away")]
    held = explain("held", 1000, held=1000, target_events=events)
    assert held.headline.endswith("; redis-server (pid 41) exited at 41 s; restarted as pid 57")
    assert "churn" not in held.headline
    finding = server_side(observed_rows(stats(observers=observers(target(fds=4990)))))
    incident = Incident(elapsed_s=10.0, trigger="observer", open=4968, wall=finding.wall, side=finding.side,
                        headline=finding.headline, evidence=finding.evidence, fix=finding.fix)
    failed = explain("failed", 10000, peak_open=4968, incidents=[incident])
    assert failed.wall == "fd_process" and failed.side == "server"
    assert "pid 41" in failed.headline and "Max open files 5,000" in failed.headline
    assert failed.evidence[-1] == "the wall is on the server side (read on the server's host by the observer)"


# -- memory per connection ---------------------------------------------------------------------------

def line(t: float, phase: str, open_: int, rss: int, slab: int, pages: int, server_rss: int,
         client_rss: int) -> Stats:
    return stats(t, open_, phase=phase,
                 observers=observers(target(rss=rss), host(socket_slab={"TCP": slab}, tcp_mem_pages=pages)),
                 server_workers=(WorkerRow(index=0, alive=True, resources={"rss_bytes": server_rss}),),
                 clients={"local": AgentRow(connected=True, workers=(
                     WorkerRow(index=0, alive=True, resources={"rss_bytes": client_rss}),))})


def test_memory_table_from_the_baseline_to_the_ramp_and_the_hold():
    mb = 1 << 20
    records = [line(0, "setup", 0, 10 * mb, 5 * mb, 10, 20 * mb, 30 * mb),
               line(1, "ramp:1", 0, 10 * mb, 5 * mb, 10, 20 * mb, 30 * mb),        # the baseline
               line(2, "ramp:1", 500, 10 * mb + 500_000, 7 * mb, 10, 20 * mb, 30 * mb),
               line(3, "ramp:1", 1000, 10 * mb + 1_000_000, 10 * mb, 10, 20 * mb + 300_000, 30 * mb + 600_000),
               line(4, "final_hold", 1000, 10 * mb + 1_200_000, 10 * mb, 110, 20 * mb + 400_000, 30 * mb + 700_000),
               line(5, "stop", 0, 0, 0, 0, 0, 0)]
    table = memory_table(records)
    assert table is not None
    rows = {r.key: r for r in table.rows}
    assert table.baseline == MemoryMoment(elapsed_s=1, open=0)
    assert table.opened is not None and table.opened.elapsed_s == 3
    assert table.pinging is not None and table.pinging.elapsed_s == 4 and table.pinging.phase == "final_hold"
    assert rows["server_rss"].opened == 1000.0 and rows["server_rss"].pinging == 1200.0
    assert rows["server_pss"].pinging == 600.0
    assert rows["connscale_server_rss"].pinging == 400.0 and rows["connscale_client_rss"].opened == 600.0
    assert rows["kernel_slab"].opened == pytest.approx(5 * mb / 1000, rel=1e-3)
    assert rows["kernel_tcp_mem"].pinging == pytest.approx(100 * 4096 / 1000)
    assert rows["kernel"].pinging == pytest.approx(rows["kernel_slab"].pinging + 409.6, rel=1e-3)
    assert table.server == MemoryServer(label="redis-server", pid=41)
    # summary.json carries it whole.
    assert MemoryTable.from_wire(json.loads(json.dumps(table.to_wire()))) == table
    plotted = per_second(records)
    assert [o for o, _ in plotted["server_rss"]] == [500, 1000, 1000]   # the stop is not plotted
    assert memory_table([stats(0.0, 5)]) is None


# -- /metrics and the live view ------------------------------------------------------------------------

def test_metrics_and_live_rows_of_an_observed_server():
    record = stats(t=1.0, observers=observers(target(fds=120, queue=3)))
    collector = TimelineCollector()
    collector.observe(record)
    from prometheus_client.exposition import generate_latest

    text = generate_latest(registry_for(collector)).decode()
    assert 'connscale_observed_open_files{observer="server",target="redis-server"} 120.0' in text
    assert 'connscale_observed_open_files_limit{observer="server",target="redis-server"} 5000.0' in text
    assert 'connscale_observed_accept_queue{observer="server",target="redis-server"} 3.0' in text
    assert 'connscale_observed_host_socket_slab_bytes{observer="server"} 1.048576e+06' in text
    (row,) = observer_rows(record)
    assert tuple(map(str, row[:5])) == ("server", "redis-server", "41", "120 / 5,000", "90") and row[6] == "3/511"


def test_check_plans_memory_with_what_a_run_measured(tmp_path, capsys):
    from connscale.app.check import check_main
    from connscale.diagnose.costs import ConnectionCosts
    from connscale.diagnose.memory import costs_from_table

    table = MemoryTable(baseline=MemoryMoment(), rows=(
        MemoryRow("kernel", "kernel total", "kernel", "host", 5000.0, 7000.0),
        MemoryRow("server_rss", "server process RSS", "user", "server", 900.0, 1200.0)))
    costs = costs_from_table(table, "runs/x")
    assert (costs.kernel_pair, costs.user_server, costs.source) == (7000.0, 1200.0, "the run in runs/x")
    assert costs.user_client == ConnectionCosts().user_client   # not measured there: this box's bench figure
    summary = Summary(verdict="held", target=1000, memory=table)
    (tmp_path / "summary.json").write_text(json.dumps(summary.to_wire()))
    check_main(["--target", "1000", "--measured", str(tmp_path)])
    out = capsys.readouterr().out
    assert f"memory per held connection measured in {tmp_path}" in out
    assert "server process RSS               user   900 B / 1,200 B" in out
    assert f"per connection as measured by the run in {tmp_path}" in out
    (tmp_path / "summary.json").write_text(json.dumps(Summary(verdict="held", target=1000).to_wire()))
    with pytest.raises(SystemExit) as e:
        check_main(["--measured", str(tmp_path)])
    assert e.value.code == 2
    assert "has no memory table" in capsys.readouterr().err
    # A summary that does not read is one line naming what does not fit.
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        check_main(["--measured", str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err == (f"connscale check: --measured: cannot read {tmp_path / 'summary.json'}: "
                                       "summary.json: Summary.verdict: missing\n")
