"""The parts of `connscale run` with fakes: the scenario on a fake clock and hub,
the run directory, the summary, the config it picks."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import yaml
from twisted.internet import defer, task
from twisted.internet.task import Clock

from connscale.app import experiment as experiment_mod
from connscale.app import run as run_mod
from connscale.app import summary
from connscale.app.children import describe_exit
from connscale.app.rundir import RunDirectory, RunDirError
from connscale.app.scenario import CALL_TIMEOUT, HUB_SILENT_LIMIT, RunError, Scenario
from connscale.config.loader import load_config, parse_config
from connscale.records.packed import pack_pieces
from connscale.config.settings import Config, ScenarioSettings
from connscale.diagnose.records import Summary
from connscale.metrics.histograms import Percentiles
from connscale.metrics.records import SCHEMA, Stats
from connscale.metrics.workers import WorkerLoss

REPO = Path(__file__).resolve().parent.parent


class FakeHub:
    """A controller whose agent opens `rate` connections a second towards its target."""

    def __init__(self, clock: Clock, rate: int = 1000, capacity: int = 10**9) -> None:
        self.clock = clock
        self.rate = rate
        self.capacity = capacity
        self.target = 0
        self.open = 0
        self.client_failures: dict[str, int] = {}
        self.server_failures: dict[str, int] = {}
        self.silent = False
        self.connected = True
        self.calls: list[tuple] = []
        self.phases: list[str] = []
        #: Seconds the fake agent takes to start its workers when asked to prepare.
        self.workers_start_s = 0.0
        self.workers = 0

    def tick(self) -> None:
        self.open = min(self.target, self.open + self.rate)

    def stats(self) -> dict:
        """What `stats_packed` unpacks to: the record's wire form."""
        return {
            "elapsed_s": 1.0,
            "client": {"open": self.open, "failures": dict(self.client_failures),
                       "failure_total": sum(self.client_failures.values()), "pings": 0, "pongs": 0},
            "server": {"open": self.open, "failures": dict(self.server_failures),
                       "failure_total": sum(self.server_failures.values())},
            "clients": {"local": {"connected": self.connected}},
            "rtt_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0},
            "workers": {"server": 2, "client": 1},
        }

    def call(self, method, *args):
        self.calls.append((method, *args))
        if method in ("stats", "stats_packed"):
            if self.silent:
                return defer.Deferred()  # never answers: the caller's timeout fires
            self.tick()
            # Packed as the hub packs it (controller.pack_bounded): protocol 3 has no unpacked stats.
            return defer.succeed(pack_pieces(self.stats()))
        if method == "set_phase":
            self.phases.append(args[0])
            return defer.succeed(args[0])
        if method == "connections_start":
            self.target = min(self.capacity, self.target + args[0])
            return defer.succeed(self.target)
        if method == "prepare":
            def started() -> int:
                self.workers = max(1, -(-args[0] // 1000))
                return self.workers
            return task.deferLater(self.clock, self.workers_start_s, started)
        raise AssertionError(method)


def later_clock() -> Clock:
    """A clock 1,000,000 s on: a run's times are never near 0."""
    clock = Clock()
    clock.advance(1_000_000)
    return clock


def scenario(clock, hub, health: Callable[[], None] = lambda: None, **settings) -> Scenario:
    base = dict(target=3000, rate=1000.0, steps=3, hold=2.0, final_hold=3.0, time_limit=60.0)
    base.update(settings)
    return Scenario(clock, ScenarioSettings(**base), hub, "local", health=health)


def drive(clock: Clock, d: defer.Deferred, seconds: float = 300.0) -> None:
    for _ in range(int(seconds * 10)):
        if d.called:
            return
        clock.advance(0.1)


def outcome(d: defer.Deferred):
    results: list = []
    d.addBoth(results.append)
    assert results, "the scenario did not finish"
    return results[0]


def start(hub: FakeHub | None = None, **kw):
    """A scenario (see scenario()) started against `hub`, by default a FakeHub on a later_clock()."""
    hub = hub or FakeHub(later_clock())
    sc = scenario(hub.clock, hub, **kw)
    return hub.clock, hub, sc, sc.execute()


def test_a_target_reached_step_by_step_is_held():
    clock, hub, sc, d = start()
    drive(clock, d)
    assert outcome(d) is None
    p = sc.progress
    assert p.held == 3000 and p.peak_open == 3000
    assert [c[1] for c in hub.calls if c[0] == "connections_start"] == [1000, 1000, 1000]
    assert [ph.phase for ph in p.phases] == [
        "setup", "ramp:1", "hold:1", "ramp:2", "hold:2", "ramp:3", "final_hold"]
    assert hub.phases == [ph.phase for ph in p.phases]  # the hub stamps its timeline with them
    assert all(ph.end is not None and ph.end >= ph.start for ph in p.phases)
    steps = [s.as_step() for s in p.step_log]
    assert [s.target for s in steps] == [1000, 2000, 3000]
    # The fake opens 1000 a second and is asked once a second: the achieved rate says so.
    assert all(s.rate_achieved == pytest.approx(1000, rel=0.15) for s in steps)
    assert all(s.rate_asked == 1000.0 for s in steps)


def test_the_final_targets_workers_start_before_the_ramp_and_their_start_up_is_setup_time():
    hub = FakeHub(later_clock())
    hub.workers_start_s = 25.0  # interpreters starting on a busy box
    clock, hub, sc, d = start(hub, steps=3, time_limit=120.0)
    drive(clock, d)
    assert outcome(d) is None and sc.progress.held == 3000
    names = [c[0] for c in hub.calls if c[0] not in ("stats", "stats_packed", "set_phase")]
    # Asked once, for the final target, before the first step's connections.
    assert names == ["prepare", "connections_start", "connections_start", "connections_start"]
    assert hub.calls[[c[0] for c in hub.calls].index("prepare")][1:] == (3000, "local")
    p = sc.progress
    assert p.client_workers_start_s == pytest.approx(25.0, abs=0.15)
    assert any("3 client workers running for 3000 connections (started in 25.1 s, before the ramp)" in e
               for e in p.events)
    # The 25 s are the setup phase's, not the first step's: its rate is the connects'.
    setup = p.phases[0]
    assert setup.phase == "setup" and setup.end is not None and setup.end - setup.start >= 25.0
    first = p.step_log[0].as_step()
    assert first.seconds is not None and first.seconds < 3
    assert first.rate_achieved == pytest.approx(1000, rel=0.15)
    s = summary.build(p, sc.settings, True, "held", 40.0, "/tmp/x")
    assert s.client_workers_start_s == pytest.approx(25.0, abs=0.15)


def test_workers_that_take_longer_than_the_time_limit_to_start_end_the_run_there():
    hub = FakeHub(later_clock())
    hub.workers_start_s = 90.0
    clock, hub, sc, d = start(hub, time_limit=60.0)
    drive(clock, d)
    assert "scenario.time_limit of 60s reached" in str(outcome(d).value)
    assert [c for c in hub.calls if c[0] == "connections_start"] == []


def test_routes_that_cannot_hold_a_step_end_the_run_with_the_reason():
    clock, hub, sc, d = start(FakeHub(later_clock(), capacity=1500))
    drive(clock, d)
    err = outcome(d).value
    assert isinstance(err, RunError)
    assert "step 2: the client's routes hold at most 1500 connections" in str(err)


def test_a_step_that_is_not_reached_in_time_says_how_far_it_got():
    # The hub's agent is far slower than the 1000/s asked.
    clock, hub, sc, d = start(FakeHub(later_clock(), rate=10), target=3000, steps=1, time_limit=1000.0)
    drive(clock, d, 200)
    err = outcome(d).value
    assert isinstance(err, RunError)
    assert "step 1: only" in str(err) and "of 3000 connections opened" in str(err) and "asked: 1000/s" in str(err)


def server_failing_hub() -> FakeHub:
    hub = FakeHub(later_clock())
    hub.server_failures = {"steady:ECONNRESET": 5}
    return hub


def test_client_failures_stop_the_run_but_server_ones_only_when_asked():
    clock, hub, sc, d = start(server_failing_hub())
    drive(clock, d)
    assert outcome(d) is None and sc.progress.held == 3000
    assert sc.progress.failures == {"server:steady:ECONNRESET": 5}

    clock, hub, sc, d = start(server_failing_hub(), count_server_failures=True)
    drive(clock, d)
    err = outcome(d).value
    assert "failures exceeded scenario.max_failures=0: server:steady:ECONNRESET=5" in str(err)


def test_a_failure_during_the_final_hold_means_nothing_was_held():
    clock, hub, sc, d = start(max_failures=10)
    while sc.progress.phase != "final_hold":
        clock.advance(0.1)
    hub.client_failures = {"steady:no_answer_from_server": 1}
    drive(clock, d)
    assert outcome(d) is None
    assert sc.progress.held == 0


def test_the_time_limit_holds():
    clock, hub, sc, d = start(time_limit=4.0)
    drive(clock, d)
    assert "scenario.time_limit of 4s reached" in str(outcome(d).value)


def test_a_hub_silent_for_a_while_is_waited_for_and_noted():
    clock, hub, sc, d = start(final_hold=30.0, time_limit=200.0)
    while sc.progress.phase != "final_hold":
        clock.advance(0.1)
    hub.silent = True
    for _ in range(400):  # 40 s: a SIGSTOPped hub
        clock.advance(0.1)
    assert not d.called
    assert sc.progress.hub_silent_s >= 30
    hub.silent = False
    drive(clock, d)
    assert outcome(d) is None
    assert any("the hub did not answer for" in e and "then resumed" in e for e in sc.progress.events)


def test_a_final_hold_ending_in_silence_is_judged_on_fresh_numbers():
    clock, hub, sc, d = start(final_hold=3.0, max_failures=10)
    while sc.progress.phase != "final_hold":
        clock.advance(0.1)
    hub.silent = True
    for _ in range(200):
        clock.advance(0.1)
    assert not d.called  # the hold is over, but its numbers are not in yet
    hub.client_failures = {"steady:no_answer_from_server": 1}
    hub.silent = False
    drive(clock, d)
    assert outcome(d) is None and sc.progress.held == 0


def test_silent_seconds_do_not_count_against_a_step():
    # 1 s asked, 18 s allowed.
    clock, hub, sc, d = start(FakeHub(later_clock(), rate=100), target=1000, steps=1, time_limit=1000.0)
    while sc.progress.phase != "ramp:1":
        clock.advance(0.1)
    hub.silent = True
    for _ in range(400):  # 40 s without an answer: far past the step's deadline
        clock.advance(0.1)
    assert not d.called
    hub.silent = False
    drive(clock, d)
    assert outcome(d) is None and sc.progress.held == 1000


def test_the_peak_is_what_the_run_reached_before_it_stopped():
    clock, hub, sc, d = start()
    drive(clock, d)
    sc.enter("stop")
    hub.open = 5000  # the agent kept opening while being stopped
    sc.absorb(Stats.from_wire(hub.stats()))
    assert sc.progress.peak_open == 3000 and sc.progress.open == 5000


def test_stats_that_do_not_fit_end_the_run_in_one_line():
    """A hub answering `stats_packed` with something that is not its record (another version,
    a bug) ends the run with what does not fit, not with a KeyError from deep in the scenario."""
    clock, hub, sc, d = start()
    hub.stats = lambda: {"elapsed_s": 1.0, "client": {"open": "many"}, "server": {}}
    drive(clock, d)
    failure = outcome(d)
    assert failure.check(RunError)
    assert str(failure.value) == "the hub's stats do not fit: Stats.client: open: expected an integer, got 'many'"


def test_a_hub_silent_too_long_ends_the_run():
    clock, hub, sc, d = start(final_hold=300.0, time_limit=1000.0)
    while sc.progress.phase != "final_hold":
        clock.advance(0.1)
    hub.silent = True
    drive(clock, d, HUB_SILENT_LIMIT + 2 * CALL_TIMEOUT + 5)
    assert "the hub has not answered for" in str(outcome(d).value)


def test_the_time_limit_holds_while_the_hub_is_silent():
    clock, hub, sc, d = start(final_hold=300.0, time_limit=20.0)
    hub.silent = True
    drive(clock, d, 40)
    assert "scenario.time_limit of 20s reached" in str(outcome(d).value)


def test_an_agent_that_never_registers():
    hub = FakeHub(later_clock())
    hub.connected = False
    clock, hub, sc, d = start(hub)
    drive(clock, d, 60)
    assert "the local agent did not register within 30 s" in str(outcome(d).value)


def test_the_health_check_ends_the_run_with_its_reason():
    hub = FakeHub(later_clock())

    def health():
        if hub.clock.seconds() > 1_000_003:
            raise RunError("the hub (pid 7) was killed by signal 9 (SIGKILL) during the run")

    clock, hub, sc, d = start(hub, health=health, rate=100.0, steps=1)
    drive(clock, d)
    assert "killed by signal 9 (SIGKILL)" in str(outcome(d).value)


# -- summary ------------------------------------------------------------------------------

def test_summary_and_verdict_line():
    clock, hub, sc, d = start()
    drive(clock, d)
    s = summary.build(sc.progress, sc.settings, True, "", 12.3, "/tmp/r")
    assert s.verdict == "held" and s.held == 3000 and s.target == 3000
    assert s.rtt_ms == Percentiles(1.0, 2.0, 3.0, 4.0)
    assert [p.phase for p in s.phases][-1] == "final_hold"
    assert len(s.steps) == 3
    assert Summary.from_wire(json.loads(json.dumps(s.to_wire()))) == s  # one way to the file and back
    assert s.to_wire()["schema"] == SCHEMA
    assert summary.verdict_line(s) == ("HELD: held=3000 target=3000 peak_open=3000 failures=0 "
                                       "rtt_ms p50=1.0 p99=3.0 workers server=2 client=1 duration=12s")
    # With the timeline's phases, the line gives the final hold's latency first.
    s = attrs.evolve(s, rtt_final_hold_ms=Percentiles(0.5, 0.8, 1.5, 2.0))
    assert summary.verdict_line(s) == ("HELD: held=3000 target=3000 peak_open=3000 failures=0 "
                                       "rtt_ms final_hold p50=0.5 p99=1.5 whole_run p99=3.0 "
                                       "workers server=2 client=1 duration=12s")


# -- run directory ------------------------------------------------------------------------

def test_run_directories_are_never_reused(tmp_path):
    a = RunDirectory.create(tmp_path / "runs", stamp=lambda: "20261130-120000")
    b = RunDirectory.create(tmp_path / "runs", stamp=lambda: "20261130-120000")
    assert a.path != b.path and a.path.name == "20261130-120000" and b.path.name == "20261130-120000-2"


def test_clients_env_values_are_in_no_run_file_and_reach_the_hub_through_its_environment(tmp_path):
    from connscale.app.children import child_env
    from connscale.control.hub import with_clients_env

    cfg = parse_config({"clients": {"c1": {"host": "198.18.0.2", "env": {"API_TOKEN": "tok-9f2c1e77aa"}}}})
    rd = RunDirectory.create(tmp_path)
    rd.write_config(cfg)
    rd.write_json("manifest.json", cfg.as_dict())
    for path in rd.path.iterdir():
        assert b"tok-9f2c1e77aa" not in path.read_bytes(), path
    # The run hands its hub the values in its environment; the hub takes them out of it.
    env = child_env(b"a-secret-for-this-test", cfg)
    loaded = load_config(rd.file("config.yaml"))
    assert loaded.clients["c1"].env == {"API_TOKEN": "<redacted>"}
    assert with_clients_env(loaded, env).clients["c1"].env == {"API_TOKEN": "tok-9f2c1e77aa"}
    assert "CONNSCALE_CLIENTS_ENV" not in env


def test_config_for_the_children_never_holds_the_secret(tmp_path):
    cfg = parse_config({"control": {"secret": "s3cret-value-123"}, "scenario": {"target": 10}})
    rd = RunDirectory.create(tmp_path)
    path = rd.write_config(cfg)
    text = path.read_text()
    assert "s3cret-value-123" not in text and "s3cret-value-123" not in rd.file("config.json").read_text()
    assert yaml.safe_load(text)["control"]["secret"] is None
    # The configuration's files are the owner's alone.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(rd.file("config.json").stat().st_mode) == 0o600
    # What the children load is the same configuration, minus the secret.
    assert load_config(path).scenario.target == 10


def test_a_write_that_fails_is_one_line_and_leaves_no_torn_file(tmp_path, monkeypatch):
    rd = RunDirectory.create(tmp_path)

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(RunDirError) as e:
        rd.write_json("summary.json", {"verdict": "held"})
    assert str(e.value) == f"cannot write {rd.file('summary.json')}: No space left on device"
    assert sorted(p.name for p in rd.path.iterdir()) == []


def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RunDirError) as e:
        RunDirectory.create(blocker / "runs")
    assert str(e.value).startswith(f"cannot create a run directory under {blocker / 'runs'}: ")
    assert "\n" not in str(e.value)


def test_a_run_uses_the_configured_secret(monkeypatch):
    monkeypatch.delenv("CONNSCALE_SECRET", raising=False)
    cfg = parse_config({"control": {"secret": "configured-secret-of-this-run"}})
    assert experiment_mod.run_secret(cfg) == (b"configured-secret-of-this-run", True)
    fresh, configured = experiment_mod.run_secret(Config())
    assert not configured
    assert len(fresh) >= 24 and fresh != experiment_mod.run_secret(Config())[0]


def test_exit_descriptions():
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    assert describe_exit(Failure(ProcessTerminated(signal=9))) == "was killed by signal 9 (SIGKILL)"
    assert describe_exit(Failure(ProcessTerminated(exitCode=3))) == "exited with status 3"


def test_the_summary_names_a_server_worker_lost_during_the_run():
    clock, hub, sc, d = start()
    drive(clock, d)
    loss = WorkerLoss(worker="hub-server-worker-2", side="server", pid=777, how="was killed by signal 9 (SIGKILL)",
                      connections=1500, t=1.0, elapsed_s=7.0)
    assert sc.progress.stats is not None
    sc.progress.stats = attrs.evolve(sc.progress.stats, worker_losses=(loss,))
    s = summary.build(sc.progress, sc.settings, True, "", 12.3, "/tmp/r")
    assert s.worker_losses == (loss,)
    assert summary.explanation(s).headline.endswith(
        "; a server worker (pid 777) was killed by signal 9 (SIGKILL) at 7 s; 1,500 connections were lost with it "
        "and replaced")
    # Stats from before this field (an older hub): no losses, nothing said.
    sc.progress.stats = Stats.from_wire(hub.stats())
    assert summary.build(sc.progress, sc.settings, True, "", 12.3, "/tmp/r").worker_losses == ()


# -- the run's calls to its hub ----------------------------------------------------------

def test_an_error_the_hub_answers_ends_the_run_with_the_hubs_reason():
    """PB hands a hub-side error over as a CopiedFailure whose value is a str; the run
    must end with the hub's reason, not with the AttributeError that Failure.trap()
    raises on such a failure ('str' object has no attribute 'with_traceback')."""
    from twisted.spread import pb
    from twisted.test import iosim

    class Hub(pb.Root):
        def remote_set_target(self, name: str, n: int) -> None:
            raise defer.TimeoutError(10.0, "Deferred")

    server_factory, client_factory = pb.PBServerFactory(Hub()), pb.PBClientFactory()
    _, _, pump = iosim.connectedServerAndClient(lambda: server_factory.buildProtocol(None),
                                                lambda: client_factory.buildProtocol(None))
    roots: list = []
    client_factory.getRootObject().addCallback(roots.append)
    pump.flush()
    experiment = experiment_mod.Experiment.__new__(experiment_mod.Experiment)
    experiment.perspective = roots[0]
    out: list = []
    experiment.call("set_target", "local", 1000).addBoth(out.append)
    pump.flush()
    assert out and out[0].check(RunError), out
    assert str(out[0].value) == "the hub failed set_target: TimeoutError: (10.0, 'Deferred')"


# -- the experiment's own steps, on a fake clock ----------------------------------------------

class FakeHubChild:
    pid = 4321

    def __init__(self, running: bool = True) -> None:
        self.running = running
        self.exit_description = "exited with status 2"

    def last_lines(self, n: int = 3) -> str:
        return "connscale-server: control.listen: cannot listen on tcp:8790: EADDRINUSE"


def experiment_with(tmp_path, dial_login):  # type: ignore[no-untyped-def]
    clock = Clock()
    cfg = parse_config({"control": {"secret": "a-secret-for-this-test"}, "scenario": {"target": 10}})
    out: list[str] = []
    exp = experiment_mod.Experiment(clock, cfg, RunDirectory.create(tmp_path / "runs"), out.append, dial_login=dial_login)
    exp.hub = FakeHubChild()
    return clock, exp, out


def test_the_run_logs_in_once_the_hub_answers(tmp_path):
    from twisted.internet.error import ConnectionRefusedError

    tries: list[float] = []

    def dial_login(reactor, host, port, role, secret, tls_ca, timeout):  # type: ignore[no-untyped-def]
        tries.append(reactor.seconds())
        assert (role, secret) == ("operator", b"a-secret-for-this-test")
        if len(tries) < 4:
            return defer.fail(ConnectionRefusedError())
        return defer.succeed(("factory", "perspective"))

    clock, exp, _ = experiment_with(tmp_path, dial_login)
    done: list = []
    exp.login().addBoth(done.append)
    assert done == [] and len(tries) == 1
    clock.pump([0.5] * 3)
    assert done == [None] and len(tries) == 4 and exp.perspective == "perspective"


def test_the_run_gives_up_on_a_hub_that_never_answers_and_says_why(tmp_path):
    from twisted.internet.error import ConnectionRefusedError

    clock, exp, _ = experiment_with(tmp_path, lambda *a, **kw: defer.fail(ConnectionRefusedError()))
    done: list = []
    exp.login().addBoth(done.append)
    clock.pump([0.5] * int(experiment_mod.HUB_LOGIN_TIMEOUT / 0.5 + 2))
    assert done and done[0].check(RunError)
    assert str(done[0].value).startswith(f"the hub did not answer on 127.0.0.1:8790 within "
                                         f"{experiment_mod.HUB_LOGIN_TIMEOUT:g}s: ")


def test_a_hub_that_died_or_refused_the_secret_ends_the_login_at_once(tmp_path):
    from twisted.cred.error import UnauthorizedLogin
    from twisted.internet.error import ConnectionRefusedError

    clock, exp, _ = experiment_with(tmp_path, lambda *a, **kw: defer.fail(ConnectionRefusedError()))
    exp.hub = FakeHubChild(running=False)
    done: list = []
    exp.login().addBoth(done.append)
    assert str(done[0].value) == ("the hub did not come up: connscale-server: control.listen: cannot listen "
                                  "on tcp:8790: EADDRINUSE")

    clock, exp, _ = experiment_with(tmp_path / "2", lambda *a, **kw: defer.fail(UnauthorizedLogin()))
    done = []
    exp.login().addBoth(done.append)
    # Where ours came from is said: the one to fix.
    assert str(done[0].value) == ("the hub refused our login: its control secret is not the run's (ours came "
                                  "from control.secret in the config)")


def test_a_summary_the_disk_refuses_is_printed_whole(tmp_path, monkeypatch):
    clock, exp, out = experiment_with(tmp_path, None)
    exp.hub = None   # never started: nothing to ask, nothing to stop

    def refuse(name, data):  # type: ignore[no-untyped-def]
        raise RunDirError(f"cannot write {exp.rundir.file(name)}: No space left on device")

    monkeypatch.setattr(exp.rundir, "write_json", refuse)
    done: list = []
    exp.finish(False, "interrupted").addBoth(done.append)
    result, written = done[0]
    assert not written and result.verdict != "held"
    assert out[0] == f"connscale run: cannot write {exp.rundir.file('summary.json')}: No space left on device; " \
                     "the summary follows"
    assert json.loads(out[1])["reason"] == "interrupted"


class JudgingHub(FakeHub):
    """A hub whose detector judges once a second, as the real collector's tick does,
    while `stats` answers at once with the fresh counters (as op_stats does). The
    framing-mismatch failures reach it client side first or server side first."""

    def __init__(self, clock: Clock, client_first: bool, fail_at: float) -> None:
        super().__init__(clock)
        from connscale.diagnose.incidents import IncidentDetector

        self.detector = IncidentDetector()
        self.client_first = client_first
        self.fail_at = fail_at
        self.started = clock.seconds()
        judging = task.LoopingCall(self.judge)
        judging.clock = clock
        # Its seconds fall between the run's polls.
        clock.callLater(0.5, judging.start, 1.0, now=False)

    def tick(self) -> None:
        super().tick()
        late = self.clock.seconds() - self.fail_at
        if late >= 0:
            first, second = ((self.client_failures, self.server_failures) if self.client_first
                             else (self.server_failures, self.client_failures))
            first_key, second_key = (("first_ping:closed_by_peer", "first_ping:protocol_error") if self.client_first
                                     else ("first_ping:protocol_error", "first_ping:closed_by_peer"))
            first[first_key] = 50
            if late >= 1.5:  # the other side's report, a poll and a half later
                second[second_key] = 50

    def stats(self) -> dict:
        out = super().stats()
        out["incidents"] = [i.to_wire() for i in self.detector.incidents]
        out["unjudged_failures"] = list(self.detector.unjudged(Stats.from_wire(out).failures()))
        return out

    def judge(self) -> None:
        self.tick()
        from tests.support.incidents import record

        self.detector.observe(record(self.clock.seconds() - self.started, open=self.open, target=self.target,
                                     failures=self.client_failures, server_failures=self.server_failures))


def test_a_run_stopped_by_a_framing_mismatch_names_it_whichever_side_reports_first():
    for client_first in (True, False):
        clock = later_clock()
        hub = JudgingHub(clock, client_first, fail_at=clock.seconds() + 2.0)
        sc = scenario(clock, hub, count_server_failures=True)
        d = sc.execute()
        drive(clock, d)
        reason = str(outcome(d).value)
        assert "failures exceeded" in reason
        # At the stop, the hub has not named what it stopped on yet ...
        assert sc.unjudged(), client_first
        settled = sc.settle()
        drive(clock, settled)
        # ... and the run waited until it had.
        assert sc.unjudged() == (), client_first
        result = summary.build(sc.progress, sc.settings, False, reason, 3.0, "/tmp/x")
        assert summary.explanation(result).wall == "protocol", client_first


def test_settling_the_verdict_waits_a_bounded_time():
    clock, hub, sc, d = start()
    hub.stats = lambda: {**FakeHub.stats(hub), "unjudged_failures": ["steady:ECONNRESET"]}
    sc.progress.stats = Stats.from_wire(hub.stats())
    began = clock.seconds()
    settled = sc.settle()
    drive(clock, settled)
    assert settled.called and clock.seconds() - began <= 6.0


# ---------------------------------------------------------------- a fleet of agents


class FakeFleet(FakeHub):
    """Two agents, `a` and `b`, each opening `rate` connections a second towards its own target."""

    def __init__(self, clock: Clock, rate: int = 1000) -> None:
        super().__init__(clock, rate)
        self.targets = {"a": 0, "b": 0}
        self.opens = {"a": 0, "b": 0}
        self.rates: dict[str, float] = {}
        self.alive = {"a": True, "b": True}
        self.check = {"target": 0, "reachable": 0, "ok": True, "hosts": [
            {"name": "hub", "host": "h1", "roles": "server", "capacity": 10**6,
             "budget": {"target": 0, "reachable": 0, "ok": True}},
            {"name": "a", "host": "ha", "roles": "client", "capacity": 4000,
             "binding": {"key": "routes", "side": "client", "capacity": 4000, "detail": "2 source IPs"},
             "budget": {"target": 0, "reachable": 0, "ok": True}},
            {"name": "b", "host": "hb", "roles": "client", "capacity": 2000,
             "binding": {"key": "routes", "side": "client", "capacity": 2000, "detail": "1 source IP"},
             "budget": {"target": 0, "reachable": 0, "ok": True}}]}

    def tick(self) -> None:
        for name in self.opens:
            if self.alive[name]:
                self.opens[name] = min(self.targets[name], self.opens[name] + self.rate)
        self.open = sum(n for name, n in self.opens.items() if self.alive[name])

    def stats(self) -> dict:
        data = super().stats()
        data["clients"] = {name: {"connected": self.alive[name], "target": self.targets[name],
                                  "open": self.opens[name], "host": f"h{name}",
                                  "lost_reason": "" if self.alive[name] else "its connection closed"}
                           for name in self.opens}
        return data

    def call(self, method, *args):
        if method == "check":
            self.calls.append((method, *args))
            return defer.succeed(dict(self.check, target=args[0], reachable=min(args[0], 6000)))
        if method == "set_rate":
            self.calls.append((method, *args))
            self.rates[args[1]] = args[0]
            return defer.succeed(None)
        if method == "connections_start":
            self.calls.append((method, *args))
            self.targets[args[1]] += args[0]
            return defer.succeed(self.targets[args[1]])
        return super().call(method, *args)


def fleet_scenario(clock: Clock, hub: FakeFleet, said: list[str], **settings) -> Scenario:
    from connscale.app import fleet

    base = dict(target=3000, rate=1000.0, steps=3, hold=2.0, final_hold=3.0, time_limit=120.0)
    base.update(settings)

    def split():
        d = fleet.plan(hub.call, ("a", "b"), base["target"], False, said.append)
        return d.addCallback(lambda result: fleet.shares_of(result[1]))

    return Scenario(clock, ScenarioSettings(**base), hub, ("a", "b"), split=split)


def test_a_fleet_is_split_by_capacity_ramped_per_agent_and_held():
    clock = later_clock()
    hub = FakeFleet(clock)
    said: list[str] = []
    sc = fleet_scenario(clock, hub, said)
    d = sc.execute()
    drive(clock, d)
    assert outcome(d) is None
    p = sc.progress
    # 4,000 against 2,000 reached: two thirds and one third of the target.
    assert p.shares == {"a": 2000, "b": 1000} and hub.targets == {"a": 2000, "b": 1000}
    assert said[1].startswith("  a on ha: 2,000 of 3,000 (reaches 4,000; routes binds first: 2 source IPs)")
    # The fleet's rate, paced per agent by its share; every step ordered from each agent.
    assert hub.rates == {"a": pytest.approx(666.67, abs=0.01), "b": pytest.approx(333.33, abs=0.01)}
    assert [c[1:] for c in hub.calls if c[0] == "connections_start"] == [
        (667, "a"), (334, "b"), (667, "a"), (333, "b"), (666, "a"), (333, "b")]
    assert p.held == 3000 and p.held_by_agent == {"a": 2000, "b": 1000}
    assert all(p.rate_achieved(name) for name in ("a", "b"))


def test_a_fleet_that_cannot_reach_its_target_is_refused_before_any_connect():
    clock = later_clock()
    hub = FakeFleet(clock)
    said: list[str] = []
    d = fleet_scenario(clock, hub, said, target=9000).execute()
    drive(clock, d)
    err = outcome(d).value
    assert isinstance(err, RunError) and str(err).startswith("preflight: the fleet reaches 6,000 of 9,000")
    assert not [c for c in hub.calls if c[0] == "connections_start"]


def test_an_agent_lost_mid_hold_ends_the_run_named_with_its_host_and_connections():
    clock = later_clock()
    hub = FakeFleet(clock)
    sc = fleet_scenario(clock, hub, [], final_hold=30.0)
    d = sc.execute()
    for _ in range(3000):
        if sc.progress.phase == "final_hold":
            break
        clock.advance(0.1)
    hub.alive["b"] = False
    drive(clock, d)
    err = outcome(d).value
    assert str(err) == "agent b on hb was lost with 1,000 connections (its connection closed)"
    p = sc.progress
    assert [(x.agent, x.host, x.connections) for x in p.lost_agents] == [("b", "hb", 1000)]
    assert p.failures["steady:agent_lost"] == 1000 and p.counted_failures >= 1000
    result = summary.build(p, sc.settings, False, str(err), 10.0, "/tmp/x")
    e = summary.explanation(result)
    assert e.wall == "agent_lost" and "agent b on hb was lost with 1,000 connections" in e.headline


def test_agents_named_but_never_registered_are_said_one_each():
    clock = later_clock()
    hub = FakeFleet(clock)
    hub.alive["b"] = False
    d = fleet_scenario(clock, hub, []).execute()
    drive(clock, d)
    assert str(outcome(d).value) == "agent b: not registered with the hub within 30 s"


def test_the_fleet_the_config_names():
    from connscale.app.fleet import members

    one = parse_config({})
    assert members(one).names == ("local",) and not members(one).remote
    both = parse_config({"clients": {"h2": {"host": "198.18.0.2"}, "obs": {"host": "198.18.0.3", "observe": "redis"}},
                         "scenario": {"agents": ["byhand"]}})
    assert members(both).names == ("h2", "byhand") and members(both).remote
    assert members(parse_config({"clients": {"h2": {"host": "h"}}, "scenario": {"local_agent": True}})).names == (
        "local", "h2")
    assert run_mod.run_roles(members(both)) == "server"


def test_what_only_the_local_agent_can_follow_is_named():
    from connscale.app.fleet import local_only

    fleet_of = {"clients": {"h2": {"host": "198.18.0.2"}}}
    assert local_only(parse_config(fleet_of)) == ()
    assert local_only(parse_config({**fleet_of, "server": {"tls": "auto"}})) == ("server.tls",)
    assert local_only(parse_config({**fleet_of, "client": {"tls": True}})) == ("client.tls",)
    assert local_only(parse_config({**fleet_of, "client": {"protocol": "redis"}})) == ("client.protocol redis",)
    assert local_only(parse_config({**fleet_of, "client": {"url": "redis://:pw@198.18.0.9:6379"}})) == (
        "client.url",)


@pytest.mark.parametrize("settings, said", [
    ({"server": {"tls": "auto"}}, "server.tls runs"),
    ({"client": {"url": "redis://:hunter2@127.0.0.1:6379"}}, "client.url runs"),
    ({"client": {"protocol": "websocket"}, "server": {"tls": "auto"}}, "client.protocol websocket and server.tls run"),
])
def test_a_fleet_run_refuses_what_a_remote_agent_cannot_be_given_in_one_line(tmp_path, settings, said):
    import subprocess

    from tests.support.procs import connscale, free_port

    # A host on loopback with nothing listening: were the run not refused, ssh would fail there.
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump({**settings, "clients": {"h2": {"host": "127.0.0.1", "port": free_port()}},
                                      "run": {"dir": str(tmp_path / "runs")}}))
    r = subprocess.run(connscale("run", "-c", str(config)), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"connscale run: {said} on the local agent only for now (a remote agent is handed the line settings "
        "alone): leave clients: and scenario.agents out of this config"], r.stdout + r.stderr
    assert "hunter2" not in r.stdout + r.stderr and not (tmp_path / "runs").exists()


def test_an_agent_away_for_less_than_its_grace_is_not_lost_and_one_away_at_the_holds_end_is_named():
    from connscale.app.scenario import AGENT_AWAY_GRACE

    def run_with_b_away(seconds: float, final_hold: float):
        clock = later_clock()
        hub = FakeFleet(clock)
        sc = fleet_scenario(clock, hub, [], final_hold=final_hold)
        d = sc.execute()
        for _ in range(3000):
            if sc.progress.phase == "final_hold":
                break
            clock.advance(0.1)
        hub.alive["b"] = False  # its session closed (a stalled hub, a network cut): it holds on
        for _ in range(int(seconds * 10)):
            clock.advance(0.1)
        hub.alive["b"] = True
        drive(clock, d)
        return sc, outcome(d)

    # Back within the grace, mid-hold: held, nothing lost.
    sc, result = run_with_b_away(AGENT_AWAY_GRACE / 2, final_hold=30.0)
    assert result is None and sc.progress.held == 3000 and sc.progress.lost_agents == []
    # Away past the grace: lost, even though it came back later.
    sc, result = run_with_b_away(AGENT_AWAY_GRACE + 3, final_hold=30.0)
    assert str(result.value) == "agent b on hb was lost with 1,000 connections (its connection closed)"
    # Away as a short hold ends, back within the grace: the hold is judged once it is back.
    sc, result = run_with_b_away(AGENT_AWAY_GRACE / 2, final_hold=2.0)
    assert result is None and sc.progress.held == 3000 and sc.progress.lost_agents == []


# -- run_main's steps --------------------------------------------------------------------------

def test_the_command_line_sets_its_keys_and_observe_takes_a_pid_or_a_name():
    args = run_mod.parse_args(["--target", "7", "--observe", " 123 "])
    assert run_mod.overrides(args) == {"scenario.target": "7", "run.dir": None, "client.url": None,
                                       "client.protocol": None, "observe.pid": " 123 "}
    assert run_mod.overrides(run_mod.parse_args(["--observe", "redis-server"]))["observe.name"] == "redis-server"


def test_what_a_fleet_cannot_run_yet_is_refused_in_one_line():
    from connscale.app.fleet import members

    alone = parse_config({"scenario": {"mode": "search"}, "server": {"tls": "auto"}})
    assert run_mod.fleet_refusal(alone, members(alone)) is None
    fleet_of = {"clients": {"h2": {"host": "198.18.0.2"}}}
    ramp = parse_config(fleet_of)
    assert run_mod.fleet_refusal(ramp, members(ramp)) is None
    search = parse_config({**fleet_of, "scenario": {"mode": "search"}})
    assert run_mod.fleet_refusal(search, members(search)) == (
        "connscale run: scenario.mode search runs on the local agent only: leave clients: and "
        "scenario.agents out of its config")
    tls = parse_config({**fleet_of, "scenario": {"mode": "search"}, "client": {"tls": True}})
    refusal = run_mod.fleet_refusal(tls, members(tls))
    assert refusal is not None and refusal.startswith("connscale run: client.tls runs on the local agent only for now")


def test_a_target_beyond_this_host_is_refused_unless_forced_and_only_announced_to_a_search(capsys):
    from connscale.app.fleet import members

    # No host of this suite holds a hundred million (its routes alone allow 14,000 per source IP).
    ramp = parse_config({"scenario": {"target": 100_000_000}})
    assert run_mod.preflight_or_refuse(ramp, members(ramp), force=False) is None
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("connscale check: ") and said[-2].startswith("connscale run: refused: ")
    assert said[-1] == "connscale run: fix the configuration or the host as above, or run anyway with --force"
    forced = run_mod.preflight_or_refuse(ramp, members(ramp), force=True)
    assert forced is not None and not forced.ok
    assert capsys.readouterr().out.splitlines()[-1].startswith("connscale run: --force: running although ")
    search = parse_config({"scenario": {"target": 100_000_000, "mode": "search"}})
    assert run_mod.preflight_or_refuse(search, members(search), force=False) is not None
    assert capsys.readouterr().out.startswith("connscale run: search: this host is expected to reach about ")
    small = parse_config({"scenario": {"target": 10}})
    assert run_mod.preflight_or_refuse(small, members(small), force=False) is not None
    assert capsys.readouterr().out == ""


def test_the_run_says_what_it_is_about_to_do(tmp_path):
    from connscale.app.fleet import members

    ramp = parse_config({"scenario": {"target": 600, "steps": 3, "rate": 200}})
    assert run_mod.opening_lines(ramp, members(ramp), "x.yaml", tmp_path) == [
        f"connscale run: target 600 connections in 3 steps at 200/s (x.yaml); records in {tmp_path}"]
    other = parse_config({"scenario": {"mode": "search", "target": 900, "search_start": 100},
                          "client": {"url": "redis://:hunter2@127.0.0.1:6379"},
                          "clients": {"h2": {"host": "198.18.0.2"}}})
    first, second = run_mod.opening_lines(other, members(other), "y.yaml", tmp_path)
    assert first.startswith("connscale run: search up to 900 connections from 100 at ")
    assert first.endswith(f"/s across 1 agents (h2) (y.yaml); records in {tmp_path}")
    assert second.startswith("connscale run: the clients speak redis to ") and "hunter2" not in second


def test_the_verdict_lines_follow_the_summary():
    from connscale.diagnose.records import read_summary

    held, why = read_summary(REPO / "tests" / "fixtures" / "old-runs" / "held")
    assert held is not None, why
    lines = run_mod.verdict_lines(held)
    assert lines[0] == summary.verdict_line(held) and not any(line.startswith("reason: ") for line in lines)
    failed, why = read_summary(REPO / "tests" / "fixtures" / "old-runs" / "failed")
    assert failed is not None and failed.reason, why
    assert failed.explanation is not None and failed.explanation.fix
    assert run_mod.verdict_lines(failed) == [
        summary.verdict_line(failed), f"reason: {failed.reason}", f"why: {failed.explanation.headline}",
        *[f"fix: {line}" for line in failed.explanation.fix]]
    search, why = read_summary(REPO / "tests" / "fixtures" / "old-runs" / "search")
    assert search is not None and search.search is not None, why
    assert run_mod.verdict_lines(search)[-1] == f"capacity: {search.search.capacity}"


@pytest.mark.parametrize("held, verdict", [
    (10, (True, "")), (7, (False, "held 7 of 10 through the final hold")),
])
def test_a_ramp_holds_when_it_held_its_target_through_the_final_hold(tmp_path, held, verdict):
    _, exp, _ = experiment_with(tmp_path, lambda *a, **kw: defer.succeed(("f", "p")))
    exp.scenario.progress.held = held
    assert exp.verdict() == verdict
