"""Reaching the controller: plain TCP, or TLS verified against `control.tls_ca`.

Agents, `connscale ctl` and `connscale run` all log in through here (or through
`link.HubLink`, which reconnects), so the three speak to a hub the same way:
the mutual exchange of `login`, where the hub proves the secret first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.spread import pb


def controller_endpoint(reactor: Any, host: str, port: int, tls_ca: str | None = None,
                        timeout: float = 10) -> IStreamClientEndpoint:
    tcp = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if not tls_ca:
        return tcp
    from twisted.internet import ssl

    with open(tls_ca, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    options = ssl.optionsForClientTLS(host, trustRoot=authority)
    return endpoints.wrapClientTLS(options, tcp)


def credentials_of(secret: Any) -> Any:
    """Credentials from a secret (bytes) or an agent-key line; passes Credentials through."""
    from connscale.control.auth import Credentials

    return secret if isinstance(secret, Credentials) else Credentials.from_secret(secret)


@defer.inlineCallbacks
def login(reactor: Any, host: str, port: int, username: str, secret: Any, tls_ca: str | None = None,
          mind: pb.Referenceable | None = None, timeout: float = 10):  # type: ignore[no-untyped-def]
    """Connect and log in (`secret`: bytes or `auth.Credentials`); fires with (factory, perspective)."""
    from connscale.control.login import ControlClientFactory, authenticate

    credentials = credentials_of(secret)
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
    attempt = factory.getRootObject().addCallback(authenticate, username, credentials, mind)
    attempt.addTimeout(timeout, reactor)
    attempt.addBoth(settle)
    try:
        perspective = yield outcome
    except BaseException:
        factory.disconnect()
        raise
    return factory, perspective


REFUSALS = ("twisted.cred.error.UnauthorizedLogin", "connscale.control.login.LoginRefused")


def is_unauthorized(exc: BaseException | Failure) -> bool:
    """A refused login (or a hub that could not prove the secret), raised here or copied over PB."""
    from twisted.cred.error import UnauthorizedLogin

    if isinstance(exc, Failure):
        # A failure copied over PB names the remote exception's class in `type`.
        remote = exc.type if isinstance(exc.type, bytes) else b""
        if not remote:
            return is_unauthorized(exc.value)
    else:
        remote = getattr(exc, "remoteType", b"")
    if isinstance(remote, bytes):
        remote = remote.decode("ascii", "replace")
    return isinstance(exc, UnauthorizedLogin) or remote in REFUSALS or type(exc).__name__ == "LoginRefused"
