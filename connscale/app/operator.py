"""An operator's session with a hub, from the command line: log in, call, log out.

`connscale ctl` and `connscale check -c` (asking a running hub about its fleet)
share it: one reactor, one session, one line for a refused login or an
unreachable hub.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from connscale.app.startup import EXIT_AUTH, EXIT_OK, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE
from connscale.records.packed import unpack
from connscale.config.settings import Config

#: Seconds ctl keeps retrying a login the hub throttles (someone's failed logins from our address).
LOGIN_PATIENCE = 60.0


def master_of(cfg: Config, given: str | None) -> tuple[str, int]:
    from connscale.config.endpoints import dial_address
    from connscale.config.addresses import parse_hostport

    if given:
        try:
            host, ports = parse_hostport(given)
        except ValueError as e:
            sys.stderr.write(f"connscale ctl: --master: {e}\n")
            raise SystemExit(EXIT_USAGE) from None
        return host, ports[0]
    if cfg.client.master is not None:
        return cfg.client.master
    return dial_address(cfg.control.listen) or ("127.0.0.1", 8790)


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
    def main(reactor: Any):
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


