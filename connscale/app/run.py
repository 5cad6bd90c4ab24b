"""`connscale run`: a whole experiment with one verdict, on this host or across a fleet.

Starts a hub as a child process, and the run's agents: a local one on loopback, or
the fleet the config names (`clients:` launched over ssh, `scenario.agents` waited
for; `app.fleet`). A `Scenario` ramps them to `scenario.target`, split by what
each host reaches, in paced steps with holds, and `summary.json` is written next to
the hub's `timeline.jsonl` in a new run directory. Exit status 0 only when the
target was held through the final hold with no counted failure (search: a knee was
found) and every gate passed (thresholds, `--baseline`: `app.gate`); 1 when the run
or a gate failed; 2 when the run could not start (configuration, a refused preflight,
the run directory). Whatever happens (an agent that cannot start, a lost agent, a
failed step, a dead hub, Ctrl-C, a full disk) the run ends with a summary and
without a child left behind.

The parts: `RunDirectory` (files), `children` (the processes), `fleet` (who holds
what), `Scenario` (the ramp), `summary` (the verdict); this module wires them.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.spread import pb

from connscale.app import children, fleet, gate, summary
from connscale.app.check import preflight
from connscale.app.live import LiveView, RunInfo
from connscale.app.rundir import RunDirectory, RunDirError
from connscale.app.scenario import Progress, RunError, Scenario
from connscale.app.search import SearchScenario
from connscale.app.startup import EXIT_USAGE, load_or_exit
from connscale.config.endpoints import dial_address
from connscale.config.loader import choose_config
from connscale.config.settings import Config
from connscale.config.tls import is_self_signed
from connscale.diagnose.budget import render
from connscale.diagnose.capacity import Roles
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
def run_secret(cfg: Config) -> bytes:
    """The configured secret if there is one (a run must log in with what its hub
    uses), else a fresh one for this run only."""
    from connscale.control.secret import SecretError, configured_secret

    try:
        value = configured_secret(cfg.control)
    except (SecretError, OSError) as e:
        raise RunError(f"control secret: {e}") from None
    return value if value is not None else secrets.token_urlsafe(24).encode()


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


def run_secret_configured(cfg: Config) -> bool:
    from connscale.control.secret import SecretError, configured_secret

    try:
        return configured_secret(cfg.control) is not None
    except (SecretError, OSError):
        return False


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
        self.secret = run_secret(cfg)
        #: The secret is the configured one (not made for this run only).
        self.secret_configured = run_secret_configured(cfg)
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
        p = self.scenario.progress
        self.view.final()
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
        result = gate.judge(self.gate, result, records or [], self.manifest)
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


def run_roles(members: fleet.Members) -> Roles:
    """What this host runs: the server and the local agent, or the server alone for a fleet."""
    if not members.remote:
        return "both"
    return "both" if members.local else "server"


def sc_mode(cfg: Config) -> str:
    return cfg.scenario.mode


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="connscale run", description="Run the scenario of a config on this machine.")
    p.add_argument("-c", "--config", default=None,
                   help="YAML config (default: ./connscale.yaml, else the shipped experiment)")
    p.add_argument("--target", help="override scenario.target")
    p.add_argument("--run-dir", help="override run.dir (parent of the run directory)")
    p.add_argument("--url", help="the target as a URL (redis://HOST:PORT, http://HOST:PORT/PATH, ws://, mqtt://, "
                                 "tcp://HOST:PORT-PORT, ...): no server of connscale's own is started [client.url]")
    p.add_argument("--protocol", help="what the clients speak: line, raw, redis, http, websocket, mqtt, custom "
                                      "[client.protocol]")
    p.add_argument("--observe", metavar="PID|NAME",
                   help="the server process to observe on this host (observe.pid or observe.name; default: "
                        "connscale's own server workers)")
    p.add_argument("--force", action="store_true",
                   help="run even when `connscale check` says this host cannot reach the target")
    gate.add_arguments(p)
    return p.parse_args(argv)


def run_main(argv: list[str]) -> int:
    args = parse_args(argv)
    path = choose_config(args.config)
    overrides: dict[str, object] = {"scenario.target": args.target, "run.dir": args.run_dir,
                                    "client.url": args.url, "client.protocol": args.protocol}
    if args.observe is not None:
        key = "observe.pid" if args.observe.strip().isdigit() else "observe.name"
        overrides[key] = args.observe
    cfg = load_or_exit("connscale run", path, overrides)
    try:
        judge = gate.from_options(cfg, args)
    except gate.GateError as e:
        sys.stderr.write("connscale run: bad configuration:\n" + "\n".join(e.problems) + "\n")
        return EXIT_USAGE

    def out(line: str) -> None:
        sys.stdout.write(line if line.startswith("\r") else line + "\n")
        sys.stdout.flush()

    members = fleet.members(cfg)
    local_only = fleet.local_only(cfg) if members.remote else ()
    if local_only:
        out(f"connscale run: {' and '.join(local_only)} {'runs' if len(local_only) == 1 else 'run'} on the local "
            "agent only for now (a remote agent is handed the line settings alone): leave clients: and "
            "scenario.agents out of this config")
        return EXIT_USAGE
    if members.remote and sc_mode(cfg) == "search":
        out("connscale run: scenario.mode search runs on the local agent only: leave clients: and "
            "scenario.agents out of its config")
        return EXIT_USAGE
    # Preflight: what this host can reach with this configuration, before any connection (with a
    # fleet, this host is the server's: the agents' hosts are judged once they registered).
    budget, limits = preflight(cfg, roles=run_roles(members))
    if not budget.ok and sc_mode(cfg) == "search":
        # A search's target is an upper bound, not a promise: say where the wall is
        # expected and let the search find it.
        out(f"connscale run: search: this host is expected to reach about {budget.reachable:,} "
            f"({budget.binding.key if budget.binding else '?'} binds first; `connscale check` says more)")
    elif not budget.ok:
        for line in render(budget, limits):
            out(f"connscale check: {line}")
        if not args.force:
            out(f"connscale run: refused: {budget.reason()}")
            out("connscale run: fix the configuration or the host as above, or run anyway with --force")
            return EXIT_USAGE  # the run could not start: 1 is a run (or a gate) that failed
        out(f"connscale run: --force: running although {budget.reason()}")
    try:
        rundir = RunDirectory.create(cfg.run.dir)
    except RunDirError as e:
        sys.stderr.write(f"connscale run: {e}\n")
        return EXIT_USAGE

    sc = cfg.scenario
    what = (f"search up to {sc.target} connections from {sc.search_start}" if sc.mode == "search"
            else f"target {sc.target} connections in {sc.steps} steps")
    across = f" across {len(members.names)} agents ({', '.join(members.names)})" if members.remote else ""
    out(f"connscale run: {what} at {sc.rate:g}/s{across} ({path}); records in {rundir.path}")
    if cfg.client.url is not None:
        out(f"connscale run: the clients speak {cfg.client.effective_protocol()} to {cfg.client.shown_url()}; "
            "no server of connscale's own is started")
    ended: list[tuple[Summary, bool]] = []
    refused: list[int] = []

    @defer.inlineCallbacks
    def main(reactor: Any):
        try:
            experiment = Experiment(reactor, cfg, rundir, out, preflight=Preflight.from_wire(budget.to_dict()),
                                    judge=judge, force=args.force)
        except (RunError, RunDirError) as e:
            sys.stderr.write(f"connscale run: {e}\n")
            refused.append(EXIT_USAGE)
            return
        ending: list[defer.Deferred[Any]] = []

        def end(ok: bool, reason: str) -> defer.Deferred[Any]:
            if not ending:
                ending.append(experiment.finish(ok, reason).addCallback(ended.append))
            return ending[0]

        # Ctrl-C or SIGTERM: what was recorded so far still gets its summary.
        reactor.addSystemEventTrigger("before", "shutdown", lambda: end(False, "interrupted"))
        ok, reason = False, ""
        try:
            yield experiment.execute()
            held = experiment.scenario.progress.held
            if sc.mode == "search":
                found = experiment.scenario.result()  # type: ignore[attr-defined]
                ok = held > 0 and not found.stopped
                reason = "" if ok else (found.stopped or "no plateau passed the SLO")
            else:
                ok = held >= sc.target
                if not ok:
                    reason = f"held {held} of {sc.target} through the final hold"
        except RunError as e:
            reason = str(e)
        except Exception as e:  # a bug: still write what we have, and say what it was
            reason = f"{type(e).__name__}: {e}"
        yield end(ok, reason)

    previous = signal.getsignal(signal.SIGINT)
    try:
        task.react(main)
    except SystemExit:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
    if refused:
        return refused[0]
    if not ended:
        return 1
    result, written = ended[0]
    out(summary.verdict_line(result))
    if result.reason:
        out(f"reason: {result.reason}")
    if result.explanation is not None:
        out(f"why: {result.explanation.headline}")
        for line in result.explanation.fix:
            out(f"fix: {line}")
    if result.cost_final_hold is not None:
        out(f"cost: {result.cost_final_hold.describe()}, over the final hold")
    if (tls := summary.tls_line(result)) is not None:
        out(tls)
    if result.search is not None:
        out(f"capacity: {result.search.capacity}")
    for line in gate.lines(result):
        out(line)
    if (junit := gate.write(judge, result)) is not None:
        out(junit)
    if written:
        out(f"summary: {rundir.file(SUMMARY_FILE)}")
    # After the children are gone, so the report sees the whole timeline; a run
    # that failed or was interrupted gets one too. Never the reason a run fails.
    out(render_report(rundir.path))
    return 0 if result.verdict in ("held", "knee") and result.gate_passed else 1


def render_report(run_dir: Path) -> str:
    """Write report.html; one line saying where, or why not."""
    from connscale.diagnose.report import ReportError, write_report

    try:
        return f"report: {write_report(run_dir)}"
    except ReportError as e:
        return f"report: none ({e})"
    except KeyboardInterrupt:
        return f"report: skipped (interrupted); render it with connscale report {run_dir}"
    except Exception as e:  # a bug in the report must not hide the verdict above
        return f"report: failed ({type(e).__name__}: {e}); retry with connscale report {run_dir}"


if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:]))
