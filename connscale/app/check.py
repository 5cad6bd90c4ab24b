"""`connscale check`: this host's limits against a target, before any connection is opened.

Reads every limit (`host.inventory`), asks `diagnose.budget` how far the
configuration can go, names the limit that binds first and prints the exact fix
for each limit short of the target. Exit status 0 when the target fits, 1 when
it does not, 2 for a bad configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import attrs

from connscale.app.startup import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, load_or_exit
from connscale.config.settings import Config
from connscale.diagnose.budget import Budget, Demand, budget, render
from connscale.diagnose.memory import costs_from_table, render_lines
from connscale.diagnose.records import SUMMARY_FILE, MemoryTable, read_summary
from connscale.host.inventory import HostLimits, read_host_limits


def preflight(cfg: Config, limits: HostLimits | None = None, roles: str = "both") -> tuple[Budget, HostLimits]:
    """`connscale run`'s check of this host for the scenario's target: server and client (the
    local agent), or the server alone when the clients are a fleet's other hosts."""
    limits = limits if limits is not None else read_host_limits()
    return budget(limits, Demand.from_config(cfg, cfg.scenario.target, roles)), limits  # type: ignore[arg-type]


def measured_table(run_dir: str) -> MemoryTable:
    """The memory table of a run directory's summary.json, or exit 2 with one line."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    summary, problem = read_summary(run_dir)
    if summary is None:
        sys.stderr.write(f"connscale check: --measured: cannot read {path}: "
                         f"{problem or 'no such file'}\n")
        raise SystemExit(EXIT_USAGE)
    if summary.memory is None or not summary.memory.rows:
        sys.stderr.write(f"connscale check: --measured: {path} has no memory table (a run before the observer?)\n")
        raise SystemExit(EXIT_USAGE)
    return summary.memory


def check_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="connscale check",
        description="How many connections can this host reach with this configuration, and what binds first?",
    )
    p.add_argument("-c", "--config", default=None, help="YAML config (default: ./connscale.yaml if present)")
    p.add_argument("--target", help="connections wanted (default: scenario.target; client.connections for --role client)")
    p.add_argument(
        "--role", choices=("both", "server", "client"), default="both",
        help="what runs on this host: both (connscale run, the default), the hub's server side, or an agent",
    )
    p.add_argument("--json", action="store_true", help="print the budget as JSON")
    p.add_argument("--measured", metavar="RUN_DIR",
                   help="plan memory with what a connection cost in that run (its summary.json's memory table: "
                        "the observed server's, connscale's and the kernel's bytes per connection)")
    args = p.parse_args(argv)
    path = args.config or ("connscale.yaml" if os.path.exists("connscale.yaml") else None)
    key = "client.connections" if args.role == "client" else "scenario.target"
    cfg = load_or_exit("connscale check", path, {key: args.target} if args.target else {})
    target = cfg.client.connections if args.role == "client" else cfg.scenario.target
    limits = read_host_limits()
    demand = Demand.from_config(cfg, target, args.role)
    if args.measured:
        table = measured_table(args.measured)
        demand = attrs.evolve(demand, costs=costs_from_table(table, args.measured))
        if not args.json:
            sys.stdout.write(f"memory per held connection measured in {args.measured} (just opened / after pinging):\n"
                             + "".join(f"  {line}\n" for line in render_lines(table)))
    result = budget(limits, demand)
    if args.json:
        print(json.dumps(dict(result.to_dict(), host_limits=limits.to_dict()), indent=2, sort_keys=True))
    else:
        sys.stdout.write("\n".join(render(result, limits)) + "\n")
    return EXIT_OK if result.ok else EXIT_REFUSED
