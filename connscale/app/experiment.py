"""One run of `connscale run`: its directory, its children, its scenario, its summary.

`Experiment` starts the hub as a child process and logs in to it, starts the local
agent and the observer, launches the fleet's agents through the hub, lets the
`Scenario` (or `SearchScenario`) ramp, and at the end writes `summary.json` and stops
every child it started. `app.run` is the command around it (arguments, preflight,
the lines printed, the exit status).
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.spread import pb

from connscale.app import children, fleet, gate, summary
from connscale.app.live import LiveView, RunInfo
from connscale.app.rundir import RunDirectory, RunDirError
from connscale.app.scenario import Progress, RunError, Scenario
from connscale.app.search import SearchScenario
from connscale.config.endpoints import dial_address
from connscale.config.settings import Config
from connscale.config.tls import is_self_signed
from connscale.diagnose.manifest import MANIFEST_FILE, collect_manifest
from connscale.diagnose.memory import memory_table
from connscale.diagnose.records import SUMMARY_FILE, AgentShare, Preflight, SideBytes, Summary
from connscale.host.resources import process_resources
from connscale.metrics import handshakes, phases
from connscale.metrics.cost import Cost, mean_cost, with_process
from connscale.metrics.records import Stats
from connscale.metrics.timeline import TIMELINE_FILE, read_timeline
from connscale.metrics.workers import cpu_seconds, rss_of
from connscale.net.tlscert import make_auto

AGENT_NAME = fleet.LOCAL
#: The observer `connscale run` starts on this host.
OBSERVER_NAME = "server"
HUB_LOGIN_TIMEOUT = 30.0


def run_secret(cfg: Config) -> tuple[bytes, bool]:
    """(the secret, whether it is the configured one): the configured secret if there is one
    (a run must log in with what its hub uses), else a fresh one for this run only."""
    from connscale.control.secret import SecretError, configured_secret

    try:
        value = configured_secret(cfg.control)
    except (SecretError, OSError) as e:
        raise RunError(f"control secret: {e}") from None
    return (value, True) if value is not None else (secrets.token_urlsafe(24).encode(), False)


def own_tls(cfg: Config, directory: Path) -> Config:
    """With `server.tls` on, the run's own clients speak TLS to its own server.

    `auto` is made here, in the run directory (the hub and every worker load those
    files), and the clients trust that certificate: verification stays on."""
    server = cfg.server.tls
    if not server.enabled:
        return cfg
    if server.cert is None:
        server = make_auto(directory, cfg.server.interface)
    client = cfg.client.tls
    if not client.enabled:
        client = attrs.evolve(client, enabled=True)
    if client.verify and client.ca_file is None and (server.auto or is_self_signed(str(server.cert))):
        client = attrs.evolve(client, ca_file=server.cert)
    return attrs.evolve(cfg, server=attrs.evolve(cfg.server, tls=server), client=attrs.evolve(cfg.client, tls=client))


class Experiment:
    """One run: its directory, its two children, its scenario, its summary."""

    def __init__(self, reactor: Any, cfg: Config, rundir: RunDirectory, out: Callable[[str], None],
                 preflight: Preflight | None = None,
                 dial_login: Callable[..., defer.Deferred[Any]] | None = None, judge: gate.Gate | None = None,
                 force: bool = False) -> None:
        self.preflight = preflight
        #: Thresholds and baseline the summary is judged against (none: an empty gate).
        self.gate = judge or gate.Gate()
        self.force = force
        #: Who holds the connections (app.fleet), their shares and hosts' manifests once known.
        self.members = fleet.members(cfg)
        self.split: tuple[AgentShare, ...] = ()
        self.manifests: dict[str, str] = {"hub": MANIFEST_FILE}
        #: control.dial.login, or a fake: the login's retries are tested on a fake clock.
        self.dial_login = dial_login
        self.reactor = reactor
        self.cfg = cfg = own_tls(cfg, rundir.path / "tls")
        self.rundir = rundir
        self.out = out
        #: secret_configured: the secret is the configured one (not made for this run only).
        self.secret, self.secret_configured = run_secret(cfg)
        self.config_path = rundir.write_config(cfg)
        # The host and its limits as the run began: the report is re-rendered from the directory alone.
        self.manifest = collect_manifest(cfg.as_dict())
        rundir.write_json(MANIFEST_FILE, self.manifest)
        self.children: list[children.RunChild] = []
        self.hub: children.RunChild | None = None
        #: The observer of the server under test (its own server workers by default): not a
        #: reason to stop the run if it fails, so health() leaves it out.
        self.observer: children.RunChild | None = None
        self._problems_said: set[str] = set()
        self.factory: Any = None
        self.perspective: Any = None
        self.view = LiveView(sys.stdout, every=5.0, clock=reactor.seconds, title="connscale run")
        self._phase_shown = ""
        self._own_hold: tuple[tuple[float, dict[str, Any]], tuple[float, dict[str, Any]]] | None = None
        self.scenario: Scenario
        if cfg.scenario.mode == "search":
            self.scenario = SearchScenario(reactor, cfg.scenario, self, AGENT_NAME, show=self.show,
                                           health=self.health, timeline=rundir.file(TIMELINE_FILE),
                                           interval=cfg.client.interval)
        else:
            self.scenario = Scenario(reactor, cfg.scenario, self, self.members.names, show=self.show,
                                     health=self.health, split=self.plan if self.members.remote else None)

    # -- HubAPI for the scenario -----------------------------------------------------
    def call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        try:
            d = self.perspective.callRemote(method, *args)
        except pb.DeadReferenceError as e:
            d = defer.fail(e)
        return d.addErrback(self._hub_failed, method)

    def _hub_failed(self, failure: Any, method: str = "") -> Any:
        """A call to the hub failed: the link broke, or the hub answered with an error."""
        if failure.check(pb.DeadReferenceError, pb.PBConnectionLost, ConnectionLost, ConnectionDone):
            return self._lost_hub(failure)
        if isinstance(failure, pb.CopiedFailure):
            # The hub's own error, as PB copies it: its value is a str, so Failure.trap() or
            # raiseException() on it would raise AttributeError ('with_traceback') and the
            # run would end with that instead of the hub's reason.
            kind = failure.type.decode() if isinstance(failure.type, bytes) else str(failure.type)
            raise RunError(f"the hub failed {method or 'a call'}: {kind.rsplit('.', 1)[-1]}: {failure.value}")
        return failure

    @defer.inlineCallbacks
    def _lost_hub(self, failure: Any):
        """The link to the hub broke: say why in the hub's own words if it died."""
        assert self.hub is not None
        if self.hub.running:
            # Its exit status usually arrives a moment after the broken pipe.
            yield defer.DeferredList([self.hub.ended, task.deferLater(self.reactor, 5.0, lambda: None)],
                                     fireOnOneCallback=True)
        self.health()
        raise RunError(f"lost the connection to the hub (pid {self.hub.pid}): {failure.getErrorMessage()}")

    # -- processes ---------------------------------------------------------------------
    def spawn(self, name: str, args: list[str]) -> children.RunChild:
        env = children.child_env(self.secret, self.cfg)
        child = children.spawn(self.reactor, name, [*args, "--config", str(self.config_path)],
                               self.rundir.file(f"{name}.log"), env)
        self.children.append(child)
        return child

    def health(self) -> None:
        for child in self.children:
            if not child.running and child is not self.observer:
                what = "hub" if child is self.hub else child.name
                raise RunError(
                    f"the {what} (pid {child.pid}) {child.exit_description} during the run; "
                    f"its last words: {child.last_lines(2) or '(none)'}; "
                    f"timeline.jsonl holds every second up to then"
                )

    def control_address(self) -> tuple[str, int]:
        return dial_address(self.cfg.control.listen) or ("127.0.0.1", 8790)

    @defer.inlineCallbacks
    def login(self):
        from connscale.control import dial

        dial_login = self.dial_login or dial.login
        host, port = self.control_address()
        deadline = self.reactor.seconds() + HUB_LOGIN_TIMEOUT
        while True:
            try:
                self.factory, self.perspective = yield dial_login(
                    self.reactor, host, port, "operator", self.secret, self.cfg.control.tls_ca, timeout=5
                )
                return
            except Exception as e:
                assert self.hub is not None
                if not self.hub.running:
                    raise RunError(f"the hub did not come up: {self.hub.last_lines() or self.hub.exit_description}")
                if dial.is_unauthorized(e):
                    from connscale.control.secret import secret_origin

                    raise RunError("the hub refused our login: its control secret is not the run's (ours came from "
                                   f"{secret_origin(self.cfg.control) if self.secret_configured else 'none: made for this run'})") from None
                if self.reactor.seconds() > deadline:
                    why = dial.one_line(e) if dial.is_throttled(e) else (self.hub.last_lines() or e)
                    raise RunError(f"the hub did not answer on {host}:{port} within {HUB_LOGIN_TIMEOUT:g}s: {why}")
                yield task.deferLater(self.reactor, 0.5, lambda: None)

    # -- output ------------------------------------------------------------------------
    def show(self, p: Progress) -> None:
        if p.phase == phases.FINAL_HOLD:
            # This process's own CPU and RSS over the final hold: its part of connscale's cost.
            reading = (self.reactor.seconds(), process_resources())
            self._own_hold = (self._own_hold[0] if self._own_hold else reading, reading)
        if p.phase != self._phase_shown and p.phase == phases.FINAL_HOLD:
            self.view.message(f"holding {p.open} connections for {self.cfg.scenario.final_hold:g}s")
        self._phase_shown = p.phase
        if p.stats is not None:
            self._say_observer_problems(p.stats)
            self.view.show(p.stats, RunInfo(p.phase, p.step, p.steps, self.cfg.scenario.target))

    def _say_observer_problems(self, stats: Stats) -> None:
        """What the observer cannot read, once each, in one line: the run goes on without it."""
        for name, row in stats.observers.items():
            for target in row.targets:
                for problem in target.problems:
                    if problem not in self._problems_said:
                        self._problems_said.add(problem)
                        self.view.message(f"observer {name}: {problem}; the run goes on without it")

    def own_cost(self, records: list[Stats]) -> Cost | None:
        """connscale's own cost over the final hold: the timeline's (hub, agents, observers,
        workers) and this process's (the scenario, its stats poll and the live view)."""
        cost = mean_cost(r.cost for r in records if r.phase == phases.FINAL_HOLD)
        if cost is None or self._own_hold is None:
            return cost
        first, last = self._own_hold
        return with_process(cost, "run", _own_cores(first, last), int(rss_of(last[1]) or 0))

    # -- the run -------------------------------------------------------------------------
    @defer.inlineCallbacks
    def execute(self):
        # The run writes the summary and the manifests: the hub only records the timeline.
        self.hub = self.spawn("hub", ["server", "--console", "none", "--record-dir", str(self.rundir.path),
                                      "--no-summary"])
        yield self.login()
        host, port = self.control_address()
        if self.members.local:
            self.spawn("agent", ["agent", "--master", f"{host}:{port}", "--name", AGENT_NAME,
                                 "--rate", str(self.cfg.scenario.rate)])
        targets = observer_targets(self.cfg, self.hub.pid)
        if targets is not None:
            self.observer = self.spawn("observer", ["observe", "--master", f"{host}:{port}", "--label",
                                                    OBSERVER_NAME, *targets])
        yield self.launch_fleet()
        yield self.scenario.execute()

    @defer.inlineCallbacks
    def run(self, done: Callable[[tuple[Summary, bool]], None]):
        """execute(), then finish() once whatever happened; `done` gets its (summary, written).

        Ctrl-C or SIGTERM finish it too: what was recorded so far still gets its summary."""
        ending: list[defer.Deferred[None]] = []

        def end(ok: bool, reason: str) -> defer.Deferred[None]:
            if not ending:
                ending.append(self.finish(ok, reason).addCallback(done))
            return ending[0]

        self.reactor.addSystemEventTrigger("before", "shutdown", lambda: end(False, "interrupted"))
        ok, reason = False, ""
        try:
            yield self.execute()
            ok, reason = self.verdict()
        except RunError as e:
            reason = str(e)
        except Exception as e:  # a bug: still write what we have, and say what it was
            reason = f"{type(e).__name__}: {e}"
        yield end(ok, reason)

    def verdict(self) -> tuple[bool, str]:
        """Once the scenario ended: whether the run did what it set out to do, and if not, why."""
        held = self.scenario.progress.held
        if isinstance(self.scenario, SearchScenario):
            found = self.scenario.result()
            ok = held > 0 and not found.stopped
            return ok, "" if ok else (found.stopped or "no plateau passed the SLO")
        target = self.cfg.scenario.target
        if held >= target:
            return True, ""
        return False, f"held {held} of {target} through the final hold"

    # -- the fleet ---------------------------------------------------------------------------
    def say(self, line: str) -> None:
        self.view.message(f"connscale run: {line}")

    def launch_fleet(self) -> defer.Deferred[None]:
        """Every `clients:` host's agent over ssh, through the hub; one line for each that fails."""
        if self.members.launched:
            self.say(f"starting {len(self.members.launched)} agent(s) over ssh: {', '.join(self.members.launched)}")
        return fleet.launch(self.call, self.members.launched, self.say)

    @defer.inlineCallbacks
    def plan(self):
        """Once every agent registered: the split by capacity (printed, recorded) and each host's
        manifest; refused here, before any connect, when the fleet cannot reach the target."""
        names = self.members.names
        _, self.split = yield fleet.plan(self.call, names, self.cfg.scenario.target, self.force, self.say)
        written = yield fleet.manifests(self.call, names, self.rundir.write_json, self.say)
        self.manifests.update(written)
        return fleet.shares_of(self.split)

    @defer.inlineCallbacks
    def finish(self, ok: bool, reason: str):
        """Last numbers, the summary on disk (or on stdout if the disk refuses), children stopped.

        Fires with (the summary, whether it reached the disk)."""
        if self.perspective is not None and self.hub is not None and self.hub.running:
            self.scenario.enter(phases.STOP)
            try:
                yield self.scenario.refresh()
                yield self.scenario.settle()
            except Exception:
                pass  # the summary says what we had
        self.scenario.close_phases()
        self.view.final()
        result = self.summarize(ok, reason)
        written = True
        try:
            self.rundir.write_json(SUMMARY_FILE, result.to_wire())
        except RunDirError as e:
            self.out(f"connscale run: {e}; the summary follows")
            self.out(json.dumps(result.to_wire(), sort_keys=True))
            written = False
        if self.factory is not None:
            self.factory.disconnect()
        yield children.stop_all(self.children)
        return result, written

    def summarize(self, ok: bool, reason: str) -> Summary:
        """The summary of what the scenario saw and the hub's timeline holds, judged by the gate."""
        p = self.scenario.progress
        search = self.scenario.result() if isinstance(self.scenario, SearchScenario) else None
        result = summary.build(p, self.cfg.scenario, ok, reason, self.reactor.seconds() - p.started,
                               str(self.rundir.path), preflight=self.preflight, search=search)
        result = attrs.evolve(result, split=self.split, manifests=dict(self.manifests))
        # RTT per phase from the hub's timeline: every final-hold second is on disk by now (the
        # stop phase was entered first, and a second that saw it counts as stop).
        timeline = self.rundir.file(TIMELINE_FILE)
        records = list(read_timeline(timeline)) if timeline.exists() else None
        if records is not None:
            result = summary.with_phases(result, phases.summary_fields(records))
            # Memory per held connection, both ends, user and kernel (the observer's and the workers' rows),
            # and what connscale itself took over the final hold.
            memory = memory_table(records)
            result = attrs.evolve(
                result, memory=memory, cost_final_hold=self.own_cost(records),
                # Every TLS handshake of the run, from the timeline's per-second histograms (None without TLS).
                handshake_ms=handshakes.handshake_ms(records),
                # TLS connections made per second (handshakes finished): the best second and the mean.
                tls_connect_rate=handshakes.connect_rate(records),
                # User memory per connection per side at the peak: the memory table's, its one owner.
                mem_per_conn_bytes=memory.workers_per_connection() if memory is not None else SideBytes(),
            )
            # One row per agent beside the merged figures (its RTT from its own histograms).
            result = summary.with_agents(result, p, records)
        # Which ends spoke TLS, and how many handshakes resumed a session.
        result = attrs.evolve(result, tls=summary.tls_fields(self.cfg, p.stats))
        result = attrs.evolve(result, explanation=summary.explanation(result, records))
        return gate.judge(self.gate, result, records or [], self.manifest)


def observer_targets(cfg: Config, hub_pid: int | None) -> list[str] | None:
    """`connscale observe` arguments for this run: `observe:` if configured, else the hub's
    server workers (the hub's children: every run gets the same numbers of its own server).
    None: nothing to observe (client.url names someone else's server and `observe:` does not
    say which process it is: `--observe redis-server` does)."""
    if cfg.observe.pid is not None:
        return ["--pid", str(cfg.observe.pid)]
    if cfg.observe.name is not None:
        return ["--name", cfg.observe.name]
    if cfg.client.url is not None:
        return None
    return ["--children-of", str(hub_pid), "--target-label", "connscale server workers"]


def _own_cores(first: tuple[float, dict[str, Any]], last: tuple[float, dict[str, Any]]) -> float:
    (t0, r0), (t1, r1) = first, last
    c0, c1 = cpu_seconds(r0), cpu_seconds(r1)
    return (c1 - c0) / (t1 - t0) if c0 is not None and c1 is not None and t1 > t0 else 0.0
