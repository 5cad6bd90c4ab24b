"""Limit incidents and the verdict, driven by invented controller records (fast).

Every wall is provoked for real in tests/test_walls_e2e.py; here the
reasoning is pinned down: which evidence names which wall, when an incident
opens (and that it opens once), and what the explanation says.
"""

from __future__ import annotations

import json

import attrs

from connscale.diagnose.incidents import SUSTAIN, IncidentDetector, load_summary
from connscale.diagnose.records import Explanation, Preflight
from connscale.diagnose.verdict import explain, losses_line, primary_incident, verdict_line
from connscale.diagnose.walls import WALLS, listen_in_use, name_wall
from connscale.diagnose.window import AgentSetup, Context, Failure, Finding, Window, WorkerLoad
from connscale.metrics.histograms import Percentiles
from connscale.metrics.load import LoadProbe
from connscale.metrics.records import Incident, Stats
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.workers import WorkerLoss, WorkerRef, WorkerRow
from tests.support.incidents import record, worker

CTX = Context(interval=2.0, timeout=1.0, backlog=8, server_ports=2, per_route_max=14_000, somaxconn=4096,
              abort_on_overflow=0, agents={"a1": AgentSetup(source_ips=("127.0.0.2", "127.0.0.3"), ephemeral=28_232,
                                                            port_range=(32768, 60999), cores=2)})


def load_of(side, agent, row):
    """A worker row (as a supervisor sends it) as the walls judge it."""
    return WorkerLoad.of(WorkerRef(side, agent, WorkerRow.from_wire(row)))


def incident(**fields):
    """An incident as the summary or a timeline line carries it."""
    return Incident.from_wire({"trigger": "failures", **fields})


def feed(records, ctx=CTX):
    d = IncidentDetector()
    opened = []
    for r in records:
        opened += d.observe(r, ctx)
    return d, opened


# --- walls from single windows --------------------------------------------------------------


def window(**kw):
    base = dict(elapsed_s=10.0, open=5000, server_open=5000, target=10_000, connect_rate=500.0, asked_rate=1000.0)
    base.update(kw)
    return Window(**base)


def test_a_failure_key_in_its_parts():
    assert Failure.of("connect:EMFILE") == Failure("connect:EMFILE", "client", "connect", "EMFILE")
    assert Failure.of("server:first_ping:closed_by_peer") == Failure(
        "server:first_ping:closed_by_peer", "server", "first_ping", "closed_by_peer")


def test_the_first_rule_that_names_a_wall_wins():
    # A server wall the observer saw beats a client's timeout, but not a wall the client's own
    # cause names (its ports), and a profile's words beat both.
    seen = Finding("fd_process", "server", "the server process reached its open-file limit")
    w = window(failures={"steady:no_answer_from_server": 5, "connect:EADDRNOTAVAIL": 5,
                         "connect:redis_maxclients": 5}, server_wall=seen)
    assert name_wall("steady:no_answer_from_server", w, CTX) is seen
    assert name_wall("connect:EADDRNOTAVAIL", w, CTX).wall == "ephemeral_ports"
    assert name_wall("connect:redis_maxclients", w, attrs.evolve(CTX, protocol="redis")).wall == "server_cap"


def test_emfile_on_a_client_worker_with_a_lowered_limit():
    w = window(failures={"connect:EMFILE": 40},
               workers=(WorkerLoad("client", "a1", 0, 77, open=195, budget=19_900, nofile=300),))
    f = name_wall("connect:EMFILE", w, CTX)
    assert (f.wall, f.side) == ("fd_process", "client")
    text = " ".join(f.evidence)
    assert "a1-client-worker-1 (pid 77) holds 195 connections under RLIMIT_NOFILE 300" in text
    assert "lowered after they started" in text
    assert f.fix[0].startswith("raise the lowered limit again")
    server = name_wall("server:connect:EMFILE", w, CTX)
    assert (server.wall, server.side) == ("fd_process", "server") and "accept" in server.headline


def test_ephemeral_ports_say_when_fewer_than_planned():
    w = window(open=1000, failures={"connect:EADDRNOTAVAIL": 12}, workers=(WorkerLoad("client", "a1", 0, 1),))
    f = name_wall("connect:EADDRNOTAVAIL", w, CTX)
    assert f.wall == "ephemeral_ports"
    text = " ".join(f.evidence)
    assert "4 routes (2 source IPs x 2 server ports)" in text and "32768-60999" in text
    assert "~250 connections per route" in text and "something else holds ports" in text
    assert any("ip_local_port_range" in fix for fix in f.fix)
    assert name_wall("connect:EADDRINUSE", w, CTX).wall == "ephemeral_ports"


def test_half_open_ghosts_with_overflows_are_the_accept_queue():
    w = window(ghosts=300, failures={"first_ping:no_answer_from_server": 30},
               kernel_delta={"listen_overflows": 120, "syn_retrans": 40})
    f = name_wall("first_ping:no_answer_from_server", w, CTX)
    assert (f.wall, f.side) == ("accept_queue", "server")
    text = " ".join(f.evidence)
    assert "up to 300 ghosts" in text and "ListenOverflows +120" in text and "SYN retransmits +40" in text
    assert "server.backlog 8" in text
    assert any("tcp_abort_on_overflow=1" in fix for fix in f.fix)
    assert name_wall("first_ping:ECONNRESET", w, CTX).wall == "accept_queue"


def test_timeouts_with_a_silent_server_are_a_stopped_server():
    w = window(failures={"steady:no_answer_from_server": 800},
               workers=(WorkerLoad("server", "hub", 0, 5, silent_s=6.0, cpu=0.0),
                        WorkerLoad("client", "a1", 0, 6, cpu=0.2, lag_ms_mean=1.0)))
    f = name_wall("steady:no_answer_from_server", w, CTX)
    assert f.wall == "server_starved" and "stopped" in f.headline
    assert "have not answered the hub for 6 s" in " ".join(f.evidence)


def test_timeouts_with_a_busy_server_are_a_starved_server():
    w = window(failures={"steady:no_answer_from_server": 800},
               workers=(WorkerLoad("server", "hub", 0, 5, cpu=0.98, lag_ms_mean=120.0, lag_ms_max=400.0),))
    f = name_wall("steady:no_answer_from_server", w, CTX)
    assert f.wall == "server_starved" and "starved of CPU" in f.headline
    assert "1 of 1 server workers saturated" in " ".join(f.evidence)


def test_timeouts_with_a_late_but_running_server_are_a_starved_server():
    # Too little CPU to reach its loop for seconds: late like a stopped worker, but the
    # kernel has it running, so the fix is CPU, not "resume the stopped process".
    w = window(failures={"steady:no_answer_from_server": 800},
               workers=(WorkerLoad("server", "hub", 0, 5, silent_s=2.8, stopped=False, cpu=0.02),))
    f = name_wall("steady:no_answer_from_server", w, CTX)
    assert f.wall == "server_starved" and "starved of CPU" in f.headline
    evidence = " ".join(f.evidence)
    assert "1 of 1 server workers saturated" in evidence
    assert "(pid 5), running but has not answered for 2.8 s (starved of CPU)" in evidence


def test_a_late_worker_whose_state_is_unknown_still_counts_as_stopped():
    late = WorkerLoad("server", "hub", 0, 5, silent_s=6.0)
    assert late.silent and not late.starved and not late.saturated
    stopped = WorkerLoad("server", "hub", 0, 5, silent_s=6.0, stopped=True)
    assert stopped.silent and not stopped.starved


def test_timeouts_with_a_saturated_client_are_the_measuring_side():
    w = window(failures={"steady:no_answer_from_server": 50},
               workers=(WorkerLoad("client", "a1", 0, 6, cpu=0.99, lag_ms_mean=300.0, lag_ms_max=900.0),
                        WorkerLoad("server", "hub", 0, 5, cpu=0.3, lag_ms_mean=1.0)))
    f = name_wall("steady:no_answer_from_server", w, CTX)
    assert (f.wall, f.side) == ("measuring_side", "client")
    assert "not the server's limit" in f.headline
    assert "pongs read late by the client's own busy loop" in f.evidence[0]
    assert any("agent hosts" in fix for fix in f.fix)


def test_every_cause_maps_to_a_known_wall():
    w = window(workers=(WorkerLoad("server", "hub", 0, 1, alive=False),))
    for key in ("connect:ENFILE", "connect:ECONNREFUSED", "steady:closed_by_peer", "steady:worker_lost",
                "steady:protocol_error", "connect:route_quota", "connect:ETIMEDOUT", "steady:ERRNO_999",
                "first_ping:ECONNRESET"):
        f = name_wall(key, window(failures={key: 1}, workers=w.workers), CTX)
        assert f.wall in WALLS and f.headline and f.evidence and f.fix, key
    both = window(failures={"server:first_ping:protocol_error": 40, "first_ping:closed_by_peer": 90})
    for key in ("first_ping:closed_by_peer", "server:first_ping:protocol_error"):
        f = name_wall(key, both, CTX)
        assert (f.wall, f.side) == ("protocol", "server") and "framing" in f.fix[0]
    assert listen_in_use("connscale-server: cannot listen on 127.0.0.1:8989: [Errno 98] Address already in use") \
        .wall == "listen_in_use"
    both = window(failures={"server:first_ping:protocol_error": 40, "first_ping:closed_by_peer": 90})
    for key in ("first_ping:closed_by_peer", "server:first_ping:protocol_error"):
        f = name_wall(key, both, CTX)
        assert (f.wall, f.side) == ("protocol", "server") and "framing" in f.fix[0]
    assert listen_in_use("something else") is None


# --- the detector over seconds --------------------------------------------------------------


def test_a_clean_run_opens_no_incident():
    d, opened = feed(record(t, open=min(1000 * t, 5000), target=5000, opened=min(1000 * t, 5000)) for t in range(12))
    assert opened == [] and d.incidents == [] and not d.measuring_side_saturated


def test_failures_open_one_incident_per_wall_with_the_snapshot():
    clients = [worker(0, open=195, nofile=300)]
    recs = [record(t, open=195, target=1000, clients=clients) for t in range(3)]
    recs += [record(3 + t, open=195, target=1000, clients=clients, failures={"connect:EMFILE": 10 * (t + 1)},
                    kernel={"listen_overflows": 0, "tcp_inuse": 400}) for t in range(5)]
    d, opened = feed(recs)
    assert len(opened) == 1
    inc = opened[0]
    assert (inc.trigger, inc.wall, inc.side) == ("failures", "fd_process", "client")
    assert inc.open == 195 and inc.target == 1000 and inc.failures == {"connect:EMFILE": 10}
    assert inc.kernel.tcp_inuse == 400
    assert inc.workers[0].nofile == 300 and inc.workers[0].side == "client"
    # One way to the timeline and PB and back.
    assert Incident.from_wire(json.loads(json.dumps(inc.to_wire()))) == inc


def test_a_lost_agents_counters_leaving_the_totals_are_no_negative_connect_rate():
    """A fleet agent lost mid-hold takes its `opened` out of the client totals: the window's
    connect rate is 0, not negative, so its incident crosses PB and the timeline as a record."""
    clients = [worker(0, open=2321, nofile=300)]
    recs = [record(t, open=3000, target=3000, opened=3000) for t in range(3)]
    recs += [record(3, open=2321, target=3000, opened=2321, clients=clients, failures={"connect:EMFILE": 10})]
    _, opened = feed(recs)
    assert len(opened) == 1 and opened[0].connect_rate == 0
    assert Incident.from_wire(json.loads(json.dumps(opened[0].to_wire()))) == opened[0]


def framing_mismatch(client_first: bool) -> list[Stats]:
    """A line client against a raw server: the server counts a protocol error and closes,
    the client sees its connections closed at the first ping. One side's report reaches
    the hub a second before the other's."""
    recs = [record(t, open=200, target=200) for t in range(3)]
    client = {"first_ping:closed_by_peer": 200}
    server = {"first_ping:protocol_error": 200}
    early, late = (client, {}) if client_first else ({}, server)
    recs.append(record(3, open=0, target=200, failures=early, server_failures=late))
    recs += [record(4 + t, open=0, target=200, failures=client, server_failures=server) for t in range(4)]
    return recs


def test_a_framing_mismatch_is_named_whichever_side_reports_first():
    for client_first in (True, False):
        d, opened = feed(framing_mismatch(client_first))
        assert [(i.wall, i.side) for i in opened] == [("protocol", "server")], (client_first, opened)
        e = explain("failed", 200, reason="failures exceeded scenario.max_failures=0", incidents=d.incidents)
        assert e.wall == "protocol" and "framing" in e.fix[0]
        # Both keys are named now; nothing is left for a stopping run to wait for.
        assert d.unjudged({"first_ping:closed_by_peer": 200, "server:first_ping:protocol_error": 200}) == ()


def test_a_close_the_server_never_explains_is_named_server_down_after_it_settles():
    recs = [record(t, open=200, target=200) for t in range(3)]
    recs += [record(3 + t, open=0, target=200, failures={"steady:closed_by_peer": 200}) for t in range(4)]
    d = IncidentDetector()
    seen = []
    for r in recs:
        seen.append((r.elapsed_s, [i.wall for i in d.observe(r, CTX)], d.unjudged({"steady:closed_by_peer": 200})))
    # Waits for the server's report (SETTLE s), then settles on what it has.
    assert seen[3] == (3.0, [], ("steady:closed_by_peer",))
    assert seen[5] == (5.0, ["server_down"], ())


def test_failures_in_the_first_record_are_news():
    # Counters start at zero: a detector that starts after the failures began still sees them.
    d, opened = feed([record(0, open=10, target=400, failures={"connect:EADDRNOTAVAIL": 7})])
    assert opened and opened[0].wall == "ephemeral_ports"
    assert opened[0].failures == {"connect:EADDRNOTAVAIL": 7}


def test_busy_clients_do_not_take_the_blame_for_a_starved_servers_timeouts():
    # Both sides busy; the clients run 60 ms late, the server worker 3 s: only the
    # server's delay can make a pong later than the 1 s timeout.
    clients = [worker(0, cpu=0.95, lag_mean=60.0, lag_max=120.0)]
    servers = [worker(0, cpu=0.04, lag_mean=3000.0, lag_max=3500.0)]
    w = Window(elapsed_s=10.0, open=2000, target=2000, failures={"steady:no_answer_from_server": 50},
               workers=tuple(load_of("client", "a1", r) for r in clients)
               + tuple(load_of("server", "hub", r) for r in servers))
    assert name_wall("steady:no_answer_from_server", w, CTX).wall == "server_starved"
    # A client whose own loop runs as late as the timeout is still the measuring side.
    late = [worker(0, cpu=0.95, lag_mean=400.0, lag_max=900.0)]
    w = attrs.evolve(w, workers=tuple(load_of("client", "a1", r) for r in late)
                     + tuple(load_of("server", "hub", r) for r in servers))
    assert name_wall("steady:no_answer_from_server", w, CTX).wall == "measuring_side"


def test_a_ramp_behind_with_saturated_clients_is_the_measuring_side():
    busy = [worker(0, cpu=0.97, lag_mean=200.0, lag_max=700.0)]
    recs = [record(t, open=200 * t, target=20_000, opened=200 * t, clients=busy, rate=2000.0) for t in range(12)]
    d, opened = feed(recs)
    walls = [(i.trigger, i.wall) for i in opened]
    assert ("measuring_side", "measuring_side") in walls
    # Saturation opens its incident after SUSTAIN seconds, the slow ramp does not add a second one.
    assert len([w for w in walls if w[1] == "measuring_side"]) == 1
    assert d.measuring_side_saturated and d.saturated_seconds == 12
    first = opened[0]
    assert first.elapsed_s == SUSTAIN - 1 and "not the server's limit" in first.headline


def test_a_ramp_behind_opens_only_after_the_grace_period():
    quiet = [worker(0, cpu=0.2)]
    # The target rises at t=0; the ramp stalls at 1000 from t=1.
    recs = [record(t, open=min(1000, 1000 * t), target=20_000, opened=min(1000, 1000 * t), clients=quiet,
                   rate=2000.0, servers=[worker(0, cpu=0.2, silent=8.0)]) for t in range(10)]
    d, opened = feed(recs)
    assert [i.trigger for i in opened] == ["ramp_behind"]
    assert opened[0].elapsed_s >= 5 and opened[0].wall == "server_starved"
    assert opened[0].asked_rate == 2000.0 and opened[0].connect_rate == 0.0


def test_ghosts_with_overflows_open_an_accept_queue_incident():
    recs = [record(t, open=1000, server_open=600, kernel={"listen_overflows": 50 * t, "listen_drops": 50 * t})
            for t in range(6)]
    d, opened = feed(recs)
    assert [(i.trigger, i.wall) for i in opened] == [("ghosts", "accept_queue")]
    assert opened[0].ghosts == 400 and (opened[0].kernel_delta.listen_overflows or 0) > 0


def test_load_summary_names_the_busiest_worker():
    r = record(1, open=10, clients=[worker(0, cpu=0.2), worker(1, cpu=0.95, lag_mean=80.0, lag_max=300.0)])
    load = load_summary(r)
    assert load.client is not None and load.client.worker == "a1-client-worker-2" and load.client.saturated == 1
    assert load.measuring_side_saturated is True
    nothing = load_summary(Stats(elapsed_s=0.0, client=Snapshot(), server=Snapshot()))
    assert nothing.client is None and nothing.measuring_side_saturated is False


# --- the verdict ----------------------------------------------------------------------------


def test_a_held_run_says_held_with_its_rtt():
    e = explain("held", 5000, held=5000, peak_open=5000, rtt=Percentiles(p50=1.0, p99=9.5))
    assert e.wall == "none" and e.headline == (
        "held 5,000 of 5,000 connections through the final hold (RTT p50 1.00 ms, p99 9.50 ms)")
    assert e.measuring_side_saturated is False and set(e.to_wire()) == {
        "headline", "wall", "side", "evidence", "fix", "measuring_side_saturated"}
    assert Explanation.from_wire(json.loads(json.dumps(e.to_wire()))) == e


def test_a_held_run_with_saturated_clients_says_it_is_not_the_servers_limit():
    sat = incident(**{"elapsed_s": 4, "open": 3000, "wall": "measuring_side", "side": "client", "headline": "saturated",
           "evidence": ["1 of 1 client workers saturated"], "fix": ["more agent hosts"]})
    e = explain("held", 5000, held=5000, peak_open=5000, incidents=[sat])
    assert e.measuring_side_saturated and "not the server's limit" in e.headline
    assert "more agent hosts" in e.fix


def test_a_stop_is_explained_by_the_earliest_definite_incident():
    sat = incident(**{"elapsed_s": 3, "open": 900, "wall": "measuring_side", "headline": "saturated", "evidence": [], "fix": []})
    emfile = incident(**{"elapsed_s": 5, "open": 950, "wall": "fd_process", "side": "client", "connect_rate": 10,
              "asked_rate": 2000, "headline": "a client worker ran out of file descriptors (EMFILE)",
              "evidence": ["40 connect:EMFILE"], "fix": ["ulimit -Hn 1048576"]})
    assert primary_incident([sat, emfile]) is emfile
    e = explain("failed", 5000, peak_open=950, reason="failures exceeded scenario.max_failures=0",
                incidents=[sat, emfile])
    assert e.wall == "fd_process" and e.headline.startswith("stopped at 950 of 5,000 connections: a client")
    assert e.fix[0] == "ulimit -Hn 1048576" and e.measuring_side_saturated
    assert "at 5 s, 950 open, connecting at 10/s of 2,000/s asked" in e.evidence[0]
    assert verdict_line(e).endswith("Fix: ulimit -Hn 1048576")


def test_stops_without_incidents_are_read_from_the_reason():
    e = explain("failed", 3000, reason="the hub did not come up: cannot listen on 127.0.0.1:8989: EADDRINUSE "
                                       "(Address already in use)")
    assert e.wall == "listen_in_use" and "ss -ltnp 'sport = :8989'" in e.fix[0]
    e = explain("failed", 3000, reason="step 1: the client's routes hold at most 1000 connections (...)")
    assert e.wall == "routes"
    e = explain("failed", 3000, reason="something odd")
    assert e.wall == "unknown" and "something odd" in e.headline


def test_a_preflight_refusal_names_the_binding_limit_and_every_fix():
    preflight = Preflight.from_wire({"target": 1_000_000, "reachable": 112_000, "ok": False, "binding": "routes",
                                     "limits": [
        {"key": "routes", "side": "client", "capacity": 112_000, "detail": "4 x 2 x 14,000", "fix": "more IPs",
         "binding": True},
        {"key": "cpu", "side": "host", "capacity": 211_000, "detail": "cores", "fix": "other hosts", "binding": False},
        {"key": "memory", "side": "host", "capacity": 1_300_000, "detail": "ok", "fix": "ram", "binding": False}]})
    e = explain("failed", 1_000_000, reason="preflight: ...", preflight=preflight)
    assert e.wall == "routes" and "reaches 112,000 of 1,000,000" in e.headline
    assert e.fix == ("more IPs", "other hosts")


# --- the load probe -------------------------------------------------------------------------


def test_load_probe_measures_lag_and_cpu_on_a_clock():
    from twisted.internet.task import Clock

    clock = Clock()
    cpu = [0.0]
    probe = LoadProbe(clock, interval=0.25, cpu_time=lambda: cpu[0], nofile=lambda: 300)
    probe.start()
    clock.advance(0.25)         # on time
    clock.advance(0.25 + 0.1)   # 100 ms late
    cpu[0] = 0.3
    probe._on_gc("start", {"generation": 2})
    probe._on_gc("stop", {"generation": 2})  # a full collection, timed by the real clock
    taken = probe.take()
    gc_ms = taken.pop("gc_ms")
    assert taken == {"cpu": 0.5, "lag_ms_max": 100.0, "lag_ms_mean": 50.0, "nofile": 300, "gc_full": 1}
    assert 0 <= gc_ms < 1000
    assert probe.take()["gc_full"] == 0  # per interval
    # A loop stuck right now: the overdue probe counts before it fires.
    clock.rightNow += 2.0
    stuck = probe.take()
    assert stuck["lag_ms_max"] >= 1500 and stuck["cpu"] == 0.0
    probe.stop()
    assert not clock.getDelayedCalls()


def test_first_ping_timeouts_with_ghosts_but_no_overflow_blame_a_starved_server():
    busy = (WorkerLoad("server", "hub", 0, 5, cpu=0.97, lag_ms_mean=120.0, lag_ms_max=300.0),)
    w = window(ghosts_max=40, failures={"first_ping:no_answer_from_server": 20}, workers=busy)
    assert name_wall("first_ping:no_answer_from_server", w, CTX).wall == "server_starved"
    # With the kernel's overflow count, the queue is the wall whatever the server does.
    w = window(ghosts_max=40, failures={"first_ping:no_answer_from_server": 20}, workers=busy,
               kernel_delta={"listen_overflows": 7})
    assert name_wall("first_ping:no_answer_from_server", w, CTX).wall == "accept_queue"


def test_saturation_during_ramps_only_says_the_hold_was_measured_cleanly():
    from connscale.diagnose.incidents import saturated_phases

    def second(phase, saturated):
        return Stats.from_wire({"elapsed_s": 0.0, "client": {}, "server": {}, "phase": phase,
                                "load": {"measuring_side_saturated": saturated}})

    records = [second("ramp:3", True) for _ in range(4)]
    records += [second("final_hold", False) for _ in range(10)]
    records += [second("stop", True) for _ in range(5)]
    phases = saturated_phases(records)
    assert phases == {"ramp:3": 4}
    sat = incident(**{"elapsed_s": 4, "open": 3000, "wall": "measuring_side", "headline": "saturated", "evidence": [],
           "fix": ["more agent hosts"]})
    e = explain("held", 5000, held=5000, peak_open=5000, incidents=[sat], saturated_phases=phases)
    assert "during ramp:3 (not during a hold)" in e.headline and "hold's RTT was measured" in e.headline
    assert e.measuring_side_saturated
    held = explain("held", 5000, held=5000, incidents=[sat], saturated_phases={"final_hold": 5})
    assert "RTT and ramp rate reflect connscale" in held.headline


def test_a_run_its_own_control_plane_ended_is_explained_by_that():
    sat = incident(**{"elapsed_s": 40, "open": 245_834, "wall": "measuring_side", "side": "client", "headline": "saturated",
           "evidence": ["1 of 53 client workers saturated"], "fix": ["more agent hosts"]})
    e = explain("failed", 1_000_000, peak_open=750_000, incidents=[sat],
                reason="lost the connection to the hub (pid 18932): ConnectionAborted")
    assert e.wall == "control_plane" and e.side == "connscale"
    assert e.headline.startswith("stopped at 750,000 of 1,000,000 connections: connscale lost its own hub")
    assert any("before that, at 40 s (245,834 open): saturated" in line for line in e.evidence)
    assert e.measuring_side_saturated and "not the server's limit" in e.headline
    e = explain("failed", 5000, peak_open=100, reason="interrupted")
    assert e.wall == "interrupted"
    e = explain("failed", 5000, reason="AttributeError: 'str' object has no attribute 'x'")
    assert e.wall == "control_plane" and "a bug" in e.headline


# --- workers lost during the run ------------------------------------------------------------

KILLED = WorkerLoss(worker="hub-server-worker-1", side="server", pid=4242, how="was killed by signal 9 (SIGKILL)",
                    connections=511, t=1.0, elapsed_s=5.2)


def test_a_held_run_that_lost_a_server_worker_says_who_how_and_how_many():
    e = explain("held", 2000, held=2000, peak_open=2000, losses=[KILLED])
    assert e.wall == "none" and e.headline == (
        "held 2,000 of 2,000 connections through the final hold; a server worker (pid 4242) was killed by "
        "signal 9 (SIGKILL) at 5 s; 511 connections were lost with it and replaced")
    assert e.evidence[0] == ("a server worker (pid 4242) was killed by signal 9 (SIGKILL) at 5 s; "
                                "511 connections were lost with it")


def test_a_failed_run_that_lost_a_worker_names_it_beside_the_wall():
    closed = incident(**{"elapsed_s": 6, "open": 1489, "wall": "server_down", "side": "server", "connect_rate": 0,
              "asked_rate": 0, "headline": "the server closed or reset established connections",
              "evidence": ["511 steady:closed_by_peer"], "fix": ["check the server's log"]})
    e = explain("failed", 2000, peak_open=2000, reason="held 0 of 2000 through the final hold",
                incidents=[closed], losses=[KILLED])
    assert e.wall == "server_down"
    assert e.headline.endswith("connections: the server closed or reset established connections; a server worker "
                                  "(pid 4242) was killed by signal 9 (SIGKILL) at 5 s; 511 connections were lost "
                                  "with it")
    assert "replaced" not in e.headline


def test_several_lost_workers_are_each_named_with_the_total():
    exited = attrs.evolve(KILLED, pid=4243, how="exited with status 1", connections=400, elapsed_s=9.0)
    line = losses_line([KILLED, exited, attrs.evolve(exited, pid=None), attrs.evolve(exited, pid=4245)])
    assert line == ("4 server workers died: pid 4242 was killed by signal 9 (SIGKILL) at 5 s (511 connections), "
                    "pid 4243 exited with status 1 at 9 s (400 connections), one exited with status 1 at 9 s "
                    "(400 connections) and 1 more; 1,711 connections were lost with them")
    assert losses_line([]) == ""
    assert explain("held", 10, held=10, losses=[]).headline.startswith("held 10 of 10 connections")


def test_a_client_worker_running_but_too_late_to_answer_gets_the_cpu_quota_fix():
    starved = worker(0, cpu=0.01, lag_mean=0.5, lag_max=1.0, silent=4.0)
    row = load_of("client", "a1", {**starved, "stopped": False})
    assert row.starved and row.saturated
    f = name_wall("steady:no_answer_from_server", Window(failures={"steady:no_answer_from_server": 3},
                                                         workers=(row,)), CTX)
    assert f.wall == "measuring_side"
    assert "has not answered for 4 s although the kernel has it running" in " ".join(f.evidence)
    assert "cgroup CPU quota" in f.fix[0]


def test_a_client_worker_with_long_stalls_while_hardly_running_is_starved():
    # A CPU quota with a long period lets the worker run in bursts: a low mean, one long stall.
    bursty = load_of("client", "a1", worker(0, cpu=0.016, lag_mean=0.6, lag_max=900.0))
    assert bursty.saturated and not bursty.late
    f = name_wall("steady:no_answer_from_server", Window(failures={"steady:no_answer_from_server": 3},
                                                         workers=(bursty,)), CTX)
    assert f.wall == "measuring_side" and "cgroup CPU quota" in f.fix[0]
    assert "runs up to 900 ms late (mean 0.6 ms) while it uses only 2 % of a core" in " ".join(f.evidence)


def test_every_tls_cause_is_the_tls_wall_with_that_causes_fix():
    from connscale.metrics.counters import TLS_CAUSES

    for cause in sorted(TLS_CAUSES):
        key = f"connect:{cause}"
        f = name_wall(key, window(failures={key: 7}), CTX)
        assert f.wall == "tls" and f.wall in WALLS and f.headline.startswith("TLS handshakes fail: ")
        assert f.evidence and f.fix and "no specific advice" not in f.fix[0], cause
    f = name_wall("connect:tls_unknown_ca", window(failures={"connect:tls_unknown_ca": 3}), CTX)
    assert f.side == "client" and "client.tls.ca_file" in f.fix[0]
    f = name_wall("server:connect:tls_peer_not_tls", window(failures={"server:connect:tls_peer_not_tls": 3}), CTX)
    assert f.side == "client" and "client.tls" in f.fix[0]
    assert name_wall("connect:tls_cert_expired", window(failures={"connect:tls_cert_expired": 1}), CTX).side == "server"
