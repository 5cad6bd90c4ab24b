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
what), `Scenario` (the ramp), `summary` (the verdict), `Experiment` (one run, from
the hub's start to the summary); this module is the command around them: its
arguments, the checks before a run, the lines it prints and its exit status.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, task

from connscale.app import fleet, gate, summary
from connscale.app.check import preflight
from connscale.app.experiment import Experiment
from connscale.app.rundir import RunDirectory, RunDirError
from connscale.app.scenario import RunError
from connscale.app.startup import EXIT_USAGE, load_or_exit
from connscale.config.loader import choose_config
from connscale.config.settings import Config
from connscale.diagnose.budget import render
from connscale.diagnose.capacity import Budget, Roles
from connscale.diagnose.records import SUMMARY_FILE, Preflight, Summary


def run_roles(members: fleet.Members) -> Roles:
    """What this host runs: the server and the local agent, or the server alone for a fleet."""
    if not members.remote:
        return "both"
    return "both" if members.local else "server"


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
    cfg = load_or_exit("connscale run", path, overrides(args))
    try:
        judge = gate.from_options(cfg, args)
    except gate.GateError as e:
        sys.stderr.write("connscale run: bad configuration:\n" + "\n".join(e.problems) + "\n")
        return EXIT_USAGE
    members = fleet.members(cfg)
    refusal = fleet_refusal(cfg, members)
    if refusal is not None:
        out(refusal)
        return EXIT_USAGE
    budget = preflight_or_refuse(cfg, members, args.force)
    if budget is None:
        return EXIT_USAGE  # the run could not start: 1 is a run (or a gate) that failed
    try:
        rundir = RunDirectory.create(cfg.run.dir)
    except RunDirError as e:
        sys.stderr.write(f"connscale run: {e}\n")
        return EXIT_USAGE
    for line in opening_lines(cfg, members, path, rundir.path):
        out(line)
    ended = drive(lambda reactor: Experiment(reactor, cfg, rundir, out, judge=judge, force=args.force,
                                             preflight=Preflight.from_wire(budget.to_dict())))
    if isinstance(ended, int):
        return ended
    result, written = ended
    for line in verdict_lines(result):
        out(line)
    if (junit := gate.write(judge, result)) is not None:
        out(junit)
    if written:
        out(f"summary: {rundir.file(SUMMARY_FILE)}")
    # After the children are gone, so the report sees the whole timeline; a run
    # that failed or was interrupted gets one too. Never the reason a run fails.
    out(render_report(rundir.path))
    return 0 if result.verdict in ("held", "knee") and result.gate_passed else 1


def out(line: str) -> None:
    """A line on stdout at once (a line starting with \\r redraws the current one)."""
    sys.stdout.write(line if line.startswith("\r") else line + "\n")
    sys.stdout.flush()


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The config keys the command line sets (None: not given)."""
    keys: dict[str, object] = {"scenario.target": args.target, "run.dir": args.run_dir,
                               "client.url": args.url, "client.protocol": args.protocol}
    if args.observe is not None:
        keys["observe.pid" if args.observe.strip().isdigit() else "observe.name"] = args.observe
    return keys


def fleet_refusal(cfg: Config, members: fleet.Members) -> str | None:
    """Why this config cannot run across a fleet yet (None: it can, or it is no fleet)."""
    if not members.remote:
        return None
    local_only = fleet.local_only(cfg)
    if local_only:
        return (f"connscale run: {' and '.join(local_only)} {'runs' if len(local_only) == 1 else 'run'} on the local "
                "agent only for now (a remote agent is handed the line settings alone): leave clients: and "
                "scenario.agents out of this config")
    if cfg.scenario.mode == "search":
        return ("connscale run: scenario.mode search runs on the local agent only: leave clients: and "
                "scenario.agents out of its config")
    return None


def preflight_or_refuse(cfg: Config, members: fleet.Members, force: bool) -> Budget | None:
    """What this host can reach with this configuration, before any connection (with a fleet,
    this host is the server's: the agents' hosts are judged once they registered).

    None: refused, and said why (a short budget without --force)."""
    budget, limits = preflight(cfg, roles=run_roles(members))
    if budget.ok:
        return budget
    if cfg.scenario.mode == "search":
        # A search's target is an upper bound, not a promise: say where the wall is
        # expected and let the search find it.
        out(f"connscale run: search: this host is expected to reach about {budget.reachable:,} "
            f"({budget.binding.key if budget.binding else '?'} binds first; `connscale check` says more)")
        return budget
    for line in render(budget, limits):
        out(f"connscale check: {line}")
    if not force:
        out(f"connscale run: refused: {budget.reason()}")
        out("connscale run: fix the configuration or the host as above, or run anyway with --force")
        return None
    out(f"connscale run: --force: running although {budget.reason()}")
    return budget


def opening_lines(cfg: Config, members: fleet.Members, path: str, run_dir: Path) -> list[str]:
    """What the run is about to do, and where it records it."""
    sc = cfg.scenario
    what = (f"search up to {sc.target} connections from {sc.search_start}" if sc.mode == "search"
            else f"target {sc.target} connections in {sc.steps} steps")
    across = f" across {len(members.names)} agents ({', '.join(members.names)})" if members.remote else ""
    lines = [f"connscale run: {what} at {sc.rate:g}/s{across} ({path}); records in {run_dir}"]
    if cfg.client.url is not None:
        lines.append(f"connscale run: the clients speak {cfg.client.effective_protocol()} to "
                     f"{cfg.client.shown_url()}; no server of connscale's own is started")
    return lines


def drive(make: Callable[[Any], Experiment]) -> tuple[Summary, bool] | int:
    """Run the reactor through the experiment `make` builds on it: its (summary, written),
    or the exit status when there is none (2: it could not start, 1: it never finished)."""
    ended: list[tuple[Summary, bool]] = []
    refused: list[int] = []

    @defer.inlineCallbacks
    def main(reactor: Any):
        try:
            experiment = make(reactor)
        except (RunError, RunDirError) as e:
            sys.stderr.write(f"connscale run: {e}\n")
            refused.append(EXIT_USAGE)
            return
        yield experiment.run(ended.append)

    previous = signal.getsignal(signal.SIGINT)
    try:
        task.react(main)
    except SystemExit:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
    if refused:
        return refused[0]
    return ended[0] if ended else 1


def verdict_lines(result: Summary) -> list[str]:
    """The summary in a few lines: the verdict, why, the fix, what connscale cost, the gates."""
    lines = [summary.verdict_line(result)]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    if result.explanation is not None:
        lines.append(f"why: {result.explanation.headline}")
        lines += [f"fix: {line}" for line in result.explanation.fix]
    if result.cost_final_hold is not None:
        lines.append(f"cost: {result.cost_final_hold.describe()}, over the final hold")
    if (tls := summary.tls_line(result)) is not None:
        lines.append(tls)
    if result.search is not None:
        lines.append(f"capacity: {result.search.capacity}")
    return lines + gate.lines(result)


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
