"""The `connscale` command: `run`, `check`, `ctl`, `report`, `server` and `agent`.

Exit codes of `ctl`, for scripts: 0 done, 1 the controller refused the
order (message on stderr), 2 bad usage or configuration, 3 hub unreachable,
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
from connscale.config.settings import Config
from connscale.metrics.render import CLIENT_COLUMNS, format_stats, format_table


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


def ctl(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="connscale ctl", description="Drive a running hub's controller.")
    p.add_argument("--master", "-m", help="HOST:PORT of the controller (default: from the config, 127.0.0.1:8790)")
    p.add_argument("--config", "-c", help="YAML config (for control.secret/secret_file and the address)")
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("clients", help="list agents")
    for verb in ("start", "stop"):
        sp = sub.add_parser(verb, help=f"{verb} N connections on a client")
        sp.add_argument("n", type=int)
        sp.add_argument("--client", help="agent name (optional when only one is connected)")
    sp = sub.add_parser("count", help="server-side count, or one client's with --client")
    sp.add_argument("--client")
    sp = sub.add_parser("stats", help="merged statistics")
    sp.add_argument("--json", action="store_true")
    sp = sub.add_parser("client-start", help="launch a configured client over ssh")
    sp.add_argument("name")
    sp = sub.add_parser("client-stop", help="stop a client and its agent")
    sp.add_argument("name")
    args = p.parse_args(argv)
    cfg = load_or_exit("connscale", args.config)
    host, port = master_of(cfg, args.master)
    from connscale.control.secret import SecretError, client_secret

    try:
        secret = client_secret(cfg.control)
    except SecretError as e:
        sys.stderr.write(f"connscale ctl: {e}\n")
        return EXIT_USAGE
    calls = {
        "clients": ("clients", ()),
        "start": ("connections_start", (getattr(args, "n", 0), getattr(args, "client", None))),
        "stop": ("connections_stop", (getattr(args, "n", 0), getattr(args, "client", None))),
        "count": ("count_connections", (getattr(args, "client", None),)),
        "stats": ("stats", ()),
        "client-start": ("client_start", (getattr(args, "name", None),)),
        "client-stop": ("client_stop", (getattr(args, "name", None),)),
    }
    method, call_args = calls[args.verb]
    status, result = operator_call(host, port, secret, method, *call_args, tls_ca=cfg.control.tls_ca)
    if status != EXIT_OK:
        sys.stderr.write(f"connscale ctl: {result}\n")
        return status
    if args.verb == "clients":
        print(format_table(result, CLIENT_COLUMNS))
    elif args.verb == "stats":
        print(json.dumps(result, indent=2, sort_keys=True) if args.json else format_stats(result))
    elif args.verb in ("start", "stop"):
        print(f"target {result}")
    elif args.verb == "count":
        print(result)
    elif args.verb == "client-start":
        print(f"started {result}")
    else:
        print("stopped")
    return EXIT_OK


def operator_call(host: str, port: int, secret: bytes, method: str, *args: Any,
                  tls_ca: str | None = None) -> tuple[int, Any]:
    """Log in as operator, make one call, return (exit status, result or message)."""
    from twisted.internet import defer, task

    from connscale.control import dial

    outcome: list[tuple[int, Any]] = []

    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        try:
            factory, perspective = yield dial.login(reactor, host, port, "operator", secret, tls_ca)
        except Exception as e:
            if dial.is_unauthorized(e):
                outcome.append((EXIT_AUTH, "the controller refused our login: wrong control secret"))
            else:
                outcome.append((EXIT_UNREACHABLE, f"cannot reach the controller at {host}:{port}: {e}"))
            return
        try:
            result = yield perspective.callRemote(method, *args)
            outcome.append((EXIT_OK, result))
        except Exception as e:
            # A pb.Error from the controller arrives as RemoteError(message).
            outcome.append((EXIT_REFUSED, (str(e).strip().splitlines() or [repr(e)])[-1]))
        factory.disconnect()

    try:
        task.react(main)
    except SystemExit:
        pass
    return outcome[0] if outcome else (EXIT_UNREACHABLE, "no answer from the controller")


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: connscale {run,check,ctl,report,server,agent} ... (connscale VERB --help for more)"
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
