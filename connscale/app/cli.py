"""The `connscale` command: `run`, `check`, `ctl`, `report`, `server`, `agent` and `observe`.

Exit codes of `ctl`, for scripts: 0 done, 1 the controller refused the
order (message on stderr) or ctl itself failed, 2 bad usage or configuration,
3 hub unreachable (or still throttling our logins after `LOGIN_PATIENCE`),
4 wrong secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Sequence

from connscale.app.startup import (
    EXIT_AUTH,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    load_or_exit,
)
from connscale.config.packed import unpack
from connscale.config.settings import Config


def master_of(cfg: Config, given: str | None) -> tuple[str, int]:
    from connscale.config.settings import endpoint_address, parse_hostport

    if given:
        try:
            host, ports = parse_hostport(given)
        except ValueError as e:
            sys.stderr.write(f"connscale ctl: --master: {e}\n")
            raise SystemExit(EXIT_USAGE) from None
        return host, ports[0]
    if cfg.client.master is not None:
        return cfg.client.master
    address = endpoint_address(cfg.control.listen) or ("127.0.0.1", 8790)
    return address[0] or "127.0.0.1", address[1]


#: ctl subcommands that are not controller verbs: they run on the operator's side.
LOCAL_SUBCOMMANDS = frozenset({"watch"})
#: Seconds ctl keeps retrying a login the hub throttles (someone's failed logins from our address).
LOGIN_PATIENCE = 60.0


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
            sys.stderr.write(f"connscale ctl: {message}\n")
        return status
    verb = BY_CLI[args.verb]
    call_args = [getattr(args, param.name) for param in verb.params]
    status, result = operator_call(host, port, secret, verb.name, *call_args, tls_ca=cfg.control.tls_ca)
    if status != EXIT_OK:
        sys.stderr.write(f"connscale ctl: {result}\n")
        return status
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, sort_keys=True))
        return EXIT_OK
    from connscale.config.records import RecordError

    try:
        print(verb.render(result))
    except RecordError as e:  # an answer that does not fit its record (another version of connscale?)
        sys.stderr.write(f"connscale ctl: the controller's answer does not fit: {e}\n")
        return EXIT_REFUSED
    return EXIT_OK


def operator_session(host: str, port: int, secret: bytes, tls_ca: str | None,
                     work: Callable[[Any, Any], Any], silent: tuple[int, Any] = (EXIT_OK, "")) -> tuple[int, Any]:
    """Log in as operator, run `work(reactor, perspective)`, log out: one reactor, one session.

    `work` returns (or fires with) (exit status, result or message). A refused
    login is EXIT_AUTH and an unreachable hub EXIT_UNREACHABLE, each one line;
    `silent` is the outcome when the reactor stops before `work` says (Ctrl-C).
    """
    from twisted.internet import defer, task

    from connscale.control import dial
    from connscale.control.auth import CredentialError
    from connscale.control.link import describe_refusal

    outcome: list[tuple[int, Any]] = []

    def waiting(seconds: float, why: str) -> None:
        sys.stderr.write(f"connscale ctl: the controller at {host}:{port} throttles logins from here ({why}); "
                         f"retrying in {seconds:.0f} s\n")

    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        try:
            factory, perspective = yield dial.login_patiently(reactor, host, port, "operator", secret, tls_ca,
                                                              patience=LOGIN_PATIENCE, on_wait=waiting)
        except CredentialError as e:
            outcome.append((EXIT_AUTH, str(e)))
            return
        except Exception as e:
            if dial.is_throttled(e):
                outcome.append((EXIT_UNREACHABLE, f"the controller at {host}:{port} still throttles logins from "
                                                  f"here after {LOGIN_PATIENCE:g} s: {dial.one_line(e)}"))
            elif dial.is_unauthorized(e):
                outcome.append((EXIT_AUTH, describe_refusal(e, f"{host}:{port}")))
            else:
                outcome.append((EXIT_UNREACHABLE, f"cannot reach the controller at {host}:{port}: {e}"))
            return
        try:
            outcome.append((yield defer.maybeDeferred(work, reactor, perspective)))
        except Exception as e:
            # A failure of ours (a display that cannot show what it got, ...): one line, never exit 0.
            outcome.append((EXIT_REFUSED, f"{type(e).__name__}: {dial.one_line(e)}"))
        finally:
            factory.disconnect()

    try:
        task.react(main)
    except (SystemExit, KeyboardInterrupt):
        pass
    return outcome[0] if outcome else silent


def remote_error(e: BaseException) -> str:
    """A pb.Error from the controller arrives as RemoteError(message): its last line."""
    return (str(e).strip().splitlines() or [repr(e)])[-1]


def operator_call(host: str, port: int, secret: bytes, method: str, *args: Any,
                  tls_ca: str | None = None) -> tuple[int, Any]:
    """Log in as operator, make one call, return (exit status, result or message)."""

    def call(reactor: Any, perspective: Any) -> Any:
        if method == "stats":  # packed and bounded by the hub: a fleet's rows as PB elements are too many
            d = perspective.callRemote("stats_packed", *args).addCallback(unpack)
        else:
            d = perspective.callRemote(method, *args)
        return d.addCallbacks(lambda result: (EXIT_OK, result), lambda f: (EXIT_REFUSED, remote_error(f.value)))

    return operator_session(host, port, secret, tls_ca, call,
                            silent=(EXIT_UNREACHABLE, "no answer from the controller"))


def watch(host: str, port: int, secret: bytes, tls_ca: str | None, interval: float, count: int,
          every: float) -> tuple[int, str]:
    """`ctl watch`: the controller's stats every `interval` seconds into a LiveView."""
    from twisted.internet import defer, task

    from connscale.app.live import LiveView
    from connscale.config.packed import PackError
    from connscale.config.records import RecordError
    from connscale.metrics.records import Stats

    @defer.inlineCallbacks
    def show(reactor: Any, perspective: Any):  # type: ignore[no-untyped-def]
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
    usage = "usage: connscale {run,check,ctl,report,server,agent,observe,agent-key} ... (connscale VERB --help for more)"
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return EXIT_OK if argv else EXIT_USAGE
    verb, rest = argv[0], argv[1:]
    if verb == "ctl":
        return ctl(rest)
    if verb == "report":
        return report(rest)
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
