"""`twistd connscale-observe` (`connscale observe`): watch the server under test on its host.

    connscale observe --name redis-server --master HUB:8790 --secret-file agent.key
    connscale observe --pid 4242                      # alone: a status line every few seconds

See `connscale.control.observer`.
"""

from __future__ import annotations

import attrs
from twisted.application.service import IService
from twisted.python import usage

from connscale.app.startup import ConfigOptions, repeat_option, startup_errors
from connscale.host.watch import TargetSpec

PROG = "connscale-observe"


class Options(ConfigOptions):
    synopsis = "[--config FILE] (--pid PID | --name NAME | --children-of PID)... [--master HOST:PORT] [options]"
    longdesc = (
        "Watch server processes on this host (their fds, sockets, memory, CPU, limits and accept queues) and "
        "this host's kernel counters, and report them to a hub every second like an agent that holds no "
        "connections. A --name target is found again when it restarts. Without --pid/--name, observe.pid "
        "or observe.name of the config."
    )
    optParameters = ConfigOptions.optParameters + [
        ["master", "m", None, "HOST:PORT of a hub's controller: report to it [client.master]."],
        ["label", None, None, "Name this observer registers under (default observer-<hostname>)."],
        ["secret-file", None, None, "File holding the control secret or agent key [control.secret_file]."],
        ["status-interval", None, None, "Seconds between status lines without a hub (default 5)."],
        ["target-label", None, None, "What to call the (first) target in reports (default: its name or pid)."],
    ]
    optFlags = [["lifeline", None, "Exit when stdin closes (used by the ssh launch and connscale run)."]]
    repeatable = ("pid", "name", "children-of")
    opt_pid = repeat_option("pid", "A process to watch, with its children; repeatable.")
    opt_name = repeat_option("name", "A process name to watch (found again when it restarts); repeatable.")
    opt_children_of = repeat_option("children-of", "Watch the children of this pid (not the pid itself).")

    def overrides(self) -> dict[str, object]:
        # Targets are ours, not config keys (the repeatables above would be joined into one).
        return {key: self[opt] for opt, key in self.keys.items() if self.get(opt) is not None}

    def targets(self, cfg) -> list[TargetSpec]:
        specs = []
        for value in self.repeated.get("pid", ()):
            if not value.isdigit() or int(value) < 1:
                raise usage.UsageError(f"--pid: expected a process id, got {value[:40]!r}")
            specs.append(TargetSpec(pid=int(value)))
        for value in self.repeated.get("children-of", ()):
            if not value.isdigit() or int(value) < 1:
                raise usage.UsageError(f"--children-of: expected a process id, got {value[:40]!r}")
            specs.append(TargetSpec(pid=int(value), children=True, label=f"children of pid {value}"))
        for value in self.repeated.get("name", ()):
            try:
                spec = TargetSpec.parse(value)
            except ValueError as e:
                raise usage.UsageError(f"--name: {e}") from None
            specs.append(TargetSpec(name=value) if spec.pid is not None else spec)
        if not specs and cfg.observe.pid is not None:
            specs.append(TargetSpec(pid=cfg.observe.pid))
        if not specs and cfg.observe.name is not None:
            specs.append(TargetSpec(name=cfg.observe.name))
        if not specs:
            raise usage.UsageError("nothing to observe: give --pid, --name or --children-of (or observe: in the config)")
        if self["target-label"]:
            specs[0] = attrs.evolve(specs[0], label=self["target-label"][:128])
        return specs


def makeService(options: Options) -> IService:
    with startup_errors(PROG):
        return _make_service(options)


def _make_service(options: Options) -> IService:
    from twisted.internet import reactor

    from connscale.control.observer import make_observer

    cfg = options.load(PROG)
    try:
        targets = options.targets(cfg)
        every = float(options["status-interval"] or 5.0)
        if not every > 0:
            raise ValueError
    except usage.UsageError as e:
        raise SystemExit(f"{PROG}: {e}") from None
    except ValueError:
        raise SystemExit(f"{PROG}: --status-interval: expected seconds > 0") from None
    top = make_observer(reactor, cfg, targets, options["label"], cfg.client.master, every, prog=PROG)
    if options["lifeline"]:
        from connscale.procs.lifeline import Lifeline

        Lifeline(reactor, PROG).setServiceParent(top)
    return top
