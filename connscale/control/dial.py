"""Reaching the controller and logging in: the one way every peer of a hub does it.

Agents, observers, `connscale ctl` and `connscale run` all log in through here
(or through `link.HubLink`, which reconnects and logs in again on every
connection), so they speak to a hub the same way: TLS (`channel`), then the
SPAKE2 login of `login`/`auth` bound to that TLS channel and to who logs in.

Logging in as an agent (what an agent kind such as an observer needs):

    credentials = dial.credentials_of(secret_or_agent_key_line)
    factory, perspective = yield dial.login(reactor, host, port, "agent:NAME", credentials,
                                            tls_ca=None, mind=my_referenceable)
    yield perspective.callRemote("register", AgentInfo(...).to_wire())

or, for a process that lives as long as the hub's session should, a
`link.HubLink(reactor, (host, port), "agent:NAME", credentials, mind=...,
on_login=register)` as a service. A refused login fails with an error for which
`is_unauthorized` is true (final: a wrong secret stays wrong); `is_throttled`
errors are not final: retry after the time they name (`link` and
`login_patiently` do).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.spread import pb

__all__ = [
    "controller_endpoint", "credentials_of", "is_throttled", "is_unauthorized", "login", "login_patiently",
    "retry_after",
]


def controller_endpoint(reactor: Any, host: str, port: int, tls_ca: str | None = None,
                        timeout: float = 10) -> IStreamClientEndpoint:
    """TLS to the hub (verified against `tls_ca` when given; see `channel`)."""
    from connscale.control.channel import client_endpoint

    return client_endpoint(reactor, host, port, tls_ca, timeout)


def credentials_of(secret: Any) -> Any:
    """Credentials from a secret (bytes) or an agent-key line; passes Credentials through."""
    from connscale.control.auth import Credentials

    return secret if isinstance(secret, Credentials) else Credentials.from_secret(secret)


@defer.inlineCallbacks
def login(reactor: Any, host: str, port: int, username: str, secret: Any, tls_ca: str | None = None,
          mind: pb.Referenceable | None = None, timeout: float = 10):
    """Connect and log in (`secret`: bytes or `auth.Credentials`); fires with (factory, perspective)."""
    from connscale.control.guard import ControlClientFactory
    from connscale.control.login import authenticate

    credentials = credentials_of(secret)
    credentials.check_role(username)  # before any network: an agent key cannot be an operator
    factory = ControlClientFactory()
    broker = yield controller_endpoint(reactor, host, port, tls_ca, timeout).connect(factory)
    # A connection dropped during login (a refused TLS handshake, a hub going
    # away) would otherwise leave the login waiting forever.
    outcome: defer.Deferred[Any] = defer.Deferred()

    def settle(result: Any) -> None:
        if not outcome.called:
            outcome.callback(result)

    broker.notifyOnDisconnect(lambda: settle(Failure(ConnectionLost(
        "the controller closed the connection during login" + (" (TLS refused?)" if tls_ca else "")
    ))))
    attempt = factory.getRootObject().addCallback(authenticate, username, credentials, mind, f"{host}:{port}")
    attempt.addTimeout(timeout, reactor)
    attempt.addBoth(settle)
    try:
        perspective = yield outcome
    except BaseException:
        factory.disconnect()
        raise
    return factory, perspective


@defer.inlineCallbacks
def login_patiently(reactor: Any, host: str, port: int, username: str, secret: Any, tls_ca: str | None = None,
                    mind: pb.Referenceable | None = None, timeout: float = 10,
                    patience: float = 60.0, on_wait: Any = None):
    """`login`, retried while the hub throttles this peer (someone else's failed logins from
    our address), for at most `patience` seconds; `on_wait(seconds, message)` is told each wait."""
    give_up = reactor.seconds() + patience
    while True:
        try:
            return (yield login(reactor, host, port, username, secret, tls_ca, mind, timeout))
        except Exception as e:
            if not is_throttled(e):
                raise
            wait = retry_after(e)
            if reactor.seconds() + wait > give_up:
                raise
            if on_wait is not None:
                on_wait(wait, one_line(e))
            yield task.deferLater(reactor, wait, lambda: None)


REFUSALS = ("twisted.cred.error.UnauthorizedLogin", "connscale.control.login.LoginRefused")
THROTTLED = "connscale.control.login.LoginThrottled"


def _remote_type(exc: BaseException | Failure) -> str:
    if isinstance(exc, Failure):
        remote = exc.type if isinstance(exc.type, bytes) else b""
        if not remote:
            return _remote_type(exc.value)
    else:
        remote = getattr(exc, "remoteType", b"")
    return remote.decode("ascii", "replace") if isinstance(remote, bytes) else str(remote or "")


def one_line(exc: BaseException | Failure) -> str:
    value = exc.value if isinstance(exc, Failure) else exc
    text = str(value).strip() or repr(value)
    return text.splitlines()[-1]


def is_throttled(exc: BaseException | Failure) -> bool:
    """The hub refused for now (too many failed logins from our address): retry later."""
    value = exc.value if isinstance(exc, Failure) else exc
    return _remote_type(exc) == THROTTLED or type(value).__name__ == "LoginThrottled"


def retry_after(exc: BaseException | Failure, default: float = 2.0) -> float:
    """The seconds a throttled refusal asks us to wait ("... try again in N s")."""
    match = re.search(r"try again in (\d+(?:\.\d+)?) s", one_line(exc))
    return max(0.5, float(match.group(1))) if match else default


def is_unauthorized(exc: BaseException | Failure) -> bool:
    """A final refusal of our login (or a hub that could not prove the secret), raised here or
    copied over PB; a throttled login is not one (see `is_throttled`)."""
    from twisted.cred.error import UnauthorizedLogin

    if is_throttled(exc):
        return False
    value = exc.value if isinstance(exc, Failure) else exc
    return (isinstance(value, UnauthorizedLogin) or _remote_type(exc) in REFUSALS
            or type(value).__name__ == "LoginRefused")
