"""`connscale check`: a host's limits (or a fleet's) against a target, before any connection.

Reads every limit (`host.inventory`), asks `diagnose.budget` how far the
configuration can go, names the limit that binds first and prints the exact fix
for each limit short of the target. Exit status 0 when the target fits, 1 when
it does not, 2 for a bad configuration.

With `clients:` (or `scenario.agents`) the config is a fleet, and the fleet is
what is checked, never this host in its place: this host as the server's, each
agent's host as a client's. The agents' limits come from a running hub (what
they registered with) when one answers at the config's address with every agent
connected, else from each `clients:` host over ssh (`connscale check --limits`
there). Every fix names the host it is for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import attrs

from connscale.app.startup import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, load_or_exit
from connscale.config.loader import choose_config
from connscale.records.base import loose
from connscale.config.settings import Config
from connscale.app.fleet import members as fleet_members
from connscale.diagnose.budget import budget, render
from connscale.diagnose.capacity import Budget, Demand, Roles
from connscale.diagnose.fleetcheck import FleetCheck, HostShare, fleet, fleet_demand, render_fleet
from connscale.diagnose.memory import costs_from_table, render_lines
from connscale.diagnose.records import SUMMARY_FILE, MemoryTable, read_summary
from connscale.host.inventory import HostLimits, read_host_limits


def preflight(cfg: Config, limits: HostLimits | None = None, roles: Roles = "both") -> tuple[Budget, HostLimits]:
    """`connscale run`'s check of this host for the scenario's target: server and client (the
    local agent), or the server alone when the clients are a fleet's other hosts."""
    limits = limits if limits is not None else read_host_limits()
    if cfg.client.url is not None and roles == "both":
        # With client.url the server is someone else's: only the client side runs here.
        roles = "client"
    return budget(limits, Demand.from_config(cfg, cfg.scenario.target, roles)), limits


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
    p.add_argument("-c", "--config", default=None,
                   help="YAML config (default, as connscale run's: ./connscale.yaml, else the shipped experiment)")
    p.add_argument("--target", help="connections wanted (default: scenario.target; client.connections for --role client)")
    p.add_argument(
        "--role", choices=("both", "server", "client"), default="both",
        help="what runs on this host: both (connscale run, the default), the hub's server side, or an agent",
    )
    p.add_argument("--json", action="store_true", help="print the budget as JSON")
    p.add_argument("--limits", action="store_true",
                   help="print this host's limits as JSON and exit (what a fleet's check asks each host over ssh)")
    p.add_argument("--measured", metavar="RUN_DIR",
                   help="plan memory with what a connection cost in that run (its summary.json's memory table: "
                        "the observed server's, connscale's and the kernel's bytes per connection)")
    args = p.parse_args(argv)
    if args.limits:
        print(json.dumps(read_host_limits().to_dict(), sort_keys=True))
        return EXIT_OK
    path = choose_config(args.config)
    key = "client.connections" if args.role == "client" else "scenario.target"
    cfg = load_or_exit("connscale check", path, {key: args.target} if args.target else {})
    target = cfg.client.connections if args.role == "client" else cfg.scenario.target
    if args.role == "both" and not args.measured and fleet_members(cfg).remote:
        fleet_result = check_fleet(cfg, target)
        if fleet_result is None:
            return EXIT_REFUSED
        if args.json:
            print(json.dumps(fleet_result.to_wire(), indent=2, sort_keys=True))
        else:
            sys.stdout.write(render_fleet(fleet_result) + "\n")
        return EXIT_OK if fleet_result.ok else EXIT_REFUSED
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


# -- a fleet ------------------------------------------------------------------------------------

#: A host's limits as read over ssh: bounded plain data, as an agent's registration carries them.
LIMITS = loose(64, 2)
#: Seconds one host's `connscale check --limits` over ssh may take.
SSH_CHECK_TIMEOUT = 45.0


def check_fleet(cfg: Config, target: int) -> FleetCheck | None:
    """The fleet's check through a running hub, else over ssh; None (said on stderr, one line per
    host) when some agent's host could not be read."""
    names = fleet_members(cfg).names
    via_hub = hub_check(cfg, target, names)
    if via_hub is not None:
        return via_hub
    named = [name for name in cfg.scenario.agents if name not in cfg.clients]
    if named:
        for name in named:
            sys.stderr.write(f"connscale check: agent {name}: scenario.agents names it, and no hub answers with it "
                             "registered: start the hub and that agent, then check again\n")
        return None
    local_roles: Roles = "both" if fleet_members(cfg).local else "server"
    shares = [HostShare("hub", read_host_limits(), fleet_demand(cfg, target, local_roles))]
    problems = []
    for name, limits in ssh_limits(cfg, fleet_members(cfg).launched).items():
        if isinstance(limits, str):
            problems.append(limits)
            continue
        host = cfg.clients[name]
        limits = attrs.evolve(limits, hostname=host.host)  # shown as the operator named it
        shares.append(HostShare(name, limits, fleet_demand(cfg, target, "client", name, tuple(host.source_ips),
                                                          host.workers)))
    for line in problems:
        sys.stderr.write(f"connscale check: cannot read the limits of {line}\n")
    return None if problems else fleet(target, shares, via="ssh")


def hub_check(cfg: Config, target: int, names: Sequence[str]) -> FleetCheck | None:
    """The hub's own fleet check when a hub answers at the config's address (with our secret) and
    every agent of the fleet is registered there; None otherwise (not an error: ssh is asked)."""
    from connscale.app.operator import master_of, operator_call
    from connscale.records.base import RecordError
    from connscale.control.secret import SecretError, client_secret

    try:
        secret = client_secret(cfg.control)
    except SecretError:
        return None
    host, port = master_of(cfg, None)
    status, answer = operator_call(host, port, secret, "check", target, tls_ca=cfg.control.tls_ca)
    if status != EXIT_OK:
        return None
    try:
        result = FleetCheck.from_wire(answer)
    except RecordError:
        return None
    registered = {h.name for h in result.client_hosts()}
    return result if all(name in registered for name in names) else None


def ssh_limits(cfg: Config, names: Sequence[str]) -> dict[str, HostLimits | str]:
    """Each `clients:` host's limits, read there by `connscale check --limits` over ssh (all at
    once); a host that cannot be read is one line saying which and why."""
    import subprocess

    from connscale.records.base import RecordError
    from connscale.control import launch

    running: dict[str, subprocess.Popen[bytes] | str] = {}
    proc: subprocess.Popen[bytes] | str  # a started ssh, or why it could not start
    for name in names:
        host = cfg.clients[name]
        argv = launch.ssh_argv(host, [host.python, "-m", "connscale", "check", "--limits"])
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            running[name] = f"{name}: cannot start ssh: {e.strerror or e}"
            continue
        running[name] = proc
    out: dict[str, HostLimits | str] = {}
    for name, proc in running.items():
        host = cfg.clients[name]
        if isinstance(proc, str):
            out[name] = proc
            continue
        try:
            # host.env first (ENV_PRELUDE reads it), then an empty key line: nothing secret goes.
            stdout, stderr = proc.communicate(launch.stdin_for(host, b""), timeout=SSH_CHECK_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[name] = f"{name} ({host.host}): no answer over ssh within {SSH_CHECK_TIMEOUT:g} s"
            continue
        if proc.returncode != 0:
            tail = stderr.decode("utf-8", "replace").splitlines()[-20:]
            out[name] = launch.explain_failure(host, proc.returncode, tail)
            continue
        try:
            data = json.loads(stdout.decode("utf-8", "replace").strip().splitlines()[-1])
            out[name] = HostLimits.from_dict(LIMITS(data))
        except (ValueError, IndexError, RecordError) as e:
            out[name] = f"{name} ({host.host}): its answer is not connscale check --limits' ({e})"
    return out

