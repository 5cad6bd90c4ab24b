"""The `connscale` command: `run`, `check`, `ctl`, `report`, `compare`, `runs`, `server`, `agent` and `observe`.

Exit codes of `ctl`, for scripts: 0 done, 1 the controller refused the
order (message on stderr) or ctl itself failed, 2 bad usage or configuration,
3 hub unreachable (or still throttling our logins after `LOGIN_PATIENCE`),
4 wrong secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from connscale.app.startup import (
    EXIT_AUTH,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    load_or_exit,
)
from connscale.app.operator import LOGIN_PATIENCE, master_of, operator_call, operator_session, remote_error
from connscale.records.packed import unpack

__all__ = ["LOGIN_PATIENCE", "master_of", "operator_call", "operator_session", "remote_error", "main", "ctl"]


#: ctl subcommands that are not controller verbs: they run on the operator's side.
LOCAL_SUBCOMMANDS = frozenset({"watch"})


def ctl_parser() -> argparse.ArgumentParser:
    """`connscale ctl`'s options and one subcommand per controller verb (control.verbs.VERBS)."""
    from connscale.control.verbs import VERBS

    p = argparse.ArgumentParser(prog="connscale ctl", description="Drive a running hub's controller.")
    p.add_argument("--master", "-m", help="HOST:PORT of the controller (default: from the config, 127.0.0.1:8790)")
    p.add_argument("--config", "-c", help="YAML config (for control.secret/secret_file and the address)")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        # Its name, as the console spells it, and its alias (both shown in the help).
        name, *aliases = verb.cli_names
        sp = sub.add_parser(name, aliases=aliases, help=verb.doc, description=verb.doc)
        for param in verb.params:
            if param.flag:
                sp.add_argument(f"--{param.name}", type=param.cli_type, help=param.help)
            else:
                sp.add_argument(param.name, type=param.cli_type, help=param.help)
        if verb.name == "stats":
            sp.add_argument("--json", action="store_true", help="the whole answer as JSON")
    sp = sub.add_parser("watch", help="a live dashboard of the hub (plain lines when stdout is not a terminal)")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between updates (default 1)")
    sp.add_argument("--count", type=int, default=0, help="stop after this many updates (default: until Ctrl-C)")
    sp.add_argument("--every", type=float, default=None,
                    help="without a terminal: seconds between plain lines (default: every update)")
    return p


def ctl(argv: Sequence[str]) -> int:
    from connscale.control.verbs import BY_CLI

    args = ctl_parser().parse_args(argv)
    cfg = load_or_exit("connscale", args.config)
    host, port = master_of(cfg, args.master)
    from connscale.control.secret import SecretError, client_secret

    try:
        secret = client_secret(cfg.control)
    except SecretError as e:
        sys.stderr.write(f"connscale ctl: {e}\n")
        return EXIT_USAGE
    if args.verb == "watch":
        if not args.interval > 0 or args.count < 0:
            sys.stderr.write("connscale ctl watch: --interval must be > 0 and --count >= 0\n")
            return EXIT_USAGE
        status, message = watch(host, port, secret, cfg.control.tls_ca, args.interval, args.count,
                                args.interval if args.every is None else args.every)
        if message:
            sys.stderr.write(f"connscale ctl: {with_origin(status, message, cfg)}\n")
        return status
    verb = BY_CLI[args.verb]
    call_args = [getattr(args, param.name) for param in verb.params]
    status, result = operator_call(host, port, secret, verb.name, *call_args, tls_ca=cfg.control.tls_ca)
    if status != EXIT_OK:
        sys.stderr.write(f"connscale ctl: {with_origin(status, str(result), cfg)}\n")
        return status
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
        return EXIT_OK
    from connscale.records.base import RecordError

    try:
        print(verb.render(result))
    except RecordError as e:  # an answer that does not fit its record (another version of connscale?)
        sys.stderr.write(f"connscale ctl: the controller's answer does not fit: {e}\n")
        return EXIT_REFUSED
    return EXIT_OK


def with_origin(status: int, message: str, cfg: Any) -> str:
    """A refused login's line, with where our secret came from (the one to fix)."""
    if status != EXIT_AUTH:
        return message
    from connscale.control.secret import secret_origin

    return f"{message} (our secret came from {secret_origin(cfg.control)})"


def watch(host: str, port: int, secret: bytes, tls_ca: str | None, interval: float, count: int,
          every: float) -> tuple[int, str]:
    """`ctl watch`: the controller's stats every `interval` seconds into a LiveView."""
    from twisted.internet import defer, task

    from connscale.app.live import LiveView
    from connscale.records.packed import PackError
    from connscale.records.base import RecordError
    from connscale.metrics.records import Stats

    @defer.inlineCallbacks
    def show(reactor: Any, perspective: Any):
        view = LiveView(every=every, clock=reactor.seconds, title=f"connscale hub {host}:{port}")
        # Ctrl-C stops the reactor mid-wait: leave the last frame (and the cursor) in place.
        reactor.addSystemEventTrigger("before", "shutdown", view.final)
        shown = 0
        try:
            while not count or shown < count:
                if shown:
                    yield task.deferLater(reactor, interval, lambda: None)
                try:
                    packed = yield perspective.callRemote("stats_packed")
                except Exception as e:
                    return (EXIT_UNREACHABLE, f"lost the controller at {host}:{port}: {e}")
                try:
                    stats = Stats.from_wire(unpack(packed))
                except (PackError, RecordError) as e:
                    return (EXIT_REFUSED, f"the controller at {host}:{port} answered stats that do not fit: {e}")
                view.show(stats)
                shown += 1
            return (EXIT_OK, "")
        finally:
            view.final()

    return operator_session(host, port, secret, tls_ca, show)


def twistd(command: str, argv: Sequence[str]) -> int:
    """`connscale agent|server ...` is `twistd -n connscale-client|server ...` without a pid file."""
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", "--nodaemon", "--pidfile=", command, *argv]
    run()
    return 0


def report(argv: Sequence[str]) -> int:
    """`connscale report RUN_DIR`: (re-)render report.html from the run directory alone."""
    p = argparse.ArgumentParser(prog="connscale report",
                                description="Render a run directory's report.html (and per-second percentiles).")
    p.add_argument("run_dir", help="a run directory (runs/<id>) holding timeline.jsonl")
    p.add_argument("-o", "--out", help="write the report here instead of RUN_DIR/report.html")
    p.add_argument("--csv", nargs="?", const="", metavar="PATH",
                   help="also write per-second RTT percentiles (default RUN_DIR/rtt_per_second.csv; '-' = stdout)")
    args = p.parse_args(argv)
    from connscale.diagnose.report import ReportError, write_csv, write_report

    try:
        if args.csv == "-":
            from connscale.diagnose.report import load_run
            from connscale.metrics.series import write_csv as write_rows

            write_rows(load_run(args.run_dir).records, sys.stdout)
        elif args.csv is not None:
            print(write_csv(args.run_dir, args.csv or None))
        print(write_report(args.run_dir, args.out), file=sys.stderr if args.csv == "-" else sys.stdout)
    except ReportError as e:
        sys.stderr.write(f"connscale report: {e}\n")
        return EXIT_USAGE
    except OSError as e:
        sys.stderr.write(f"connscale report: {e.filename or args.run_dir}: {e.strerror}\n")
        return EXIT_USAGE
    return EXIT_OK


def agent_key(argv: Sequence[str]) -> int:
    """`connscale agent-key`: the line an agent host needs instead of the secret (`ctl agent-key`)."""
    p = argparse.ArgumentParser(
        prog="connscale agent-key",
        description="Print an agent key of the running hub: a secret-file line that lets an agent "
                    "register (as NAME only, with --name) and nothing more (it cannot give orders or "
                    "launch agents). Asks the hub, which holds this deployment's salt.")
    p.add_argument("--config", "-c", help="YAML config (for control.secret/secret_file and the address)")
    p.add_argument("--master", "-m", help="HOST:PORT of the controller (default: from the config)")
    p.add_argument("--name", help="the agent name the key is for (default: any name)")
    args = p.parse_args(argv)
    return ctl([*(["--config", args.config] if args.config else []),
                *(["--master", args.master] if args.master else []),
                "agent-key", *(["--name", args.name] if args.name else [])])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: connscale {run,check,ctl,report,compare,runs,server,agent,observe,agent-key} ... "
             "(connscale VERB --help for more)")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return EXIT_OK if argv else EXIT_USAGE
    verb, rest = argv[0], argv[1:]
    if verb == "ctl":
        return ctl(rest)
    if verb == "report":
        return report(rest)
    if verb == "compare":
        from connscale.app.compare import compare_main

        return compare_main(rest)
    if verb == "runs":
        from connscale.app.runs import runs_main

        return runs_main(rest)
    if verb == "agent":
        return twistd("connscale-client", rest)
    if verb == "observe":
        return twistd("connscale-observe", rest)
    if verb == "agent-key":
        return agent_key(rest)
    if verb == "server":
        return twistd("connscale-server", rest)
    if verb == "check":
        from connscale.app.check import check_main

        return check_main(rest)
    if verb == "run":
        from connscale.app.run import run_main

        return run_main(rest)
    sys.stderr.write(f"connscale: unknown command {verb!r}\n{usage}\n")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
