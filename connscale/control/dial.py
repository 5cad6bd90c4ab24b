"""Reaching the controller: plain TCP, or TLS verified against `control.tls_ca`.

Agents, `connscale ctl` and `connscale run` all log in through here, so the
three speak to a hub the same way.
"""

from __future__ import annotations

from typing import Any

from twisted.cred import credentials
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


@defer.inlineCallbacks
def login(reactor: Any, host: str, port: int, username: str, secret: bytes, tls_ca: str | None = None,
          mind: pb.Referenceable | None = None, timeout: float = 10):  # type: ignore[no-untyped-def]
    """Connect and log in; fires with (factory, perspective)."""
    factory = pb.PBClientFactory()
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
    attempt = factory.login(credentials.UsernamePassword(username.encode(), secret), client=mind)
    attempt.addTimeout(timeout, reactor)
    attempt.addBoth(settle)
    try:
        perspective = yield outcome
    except BaseException:
        factory.disconnect()
        raise
    return factory, perspective


def is_unauthorized(exc: BaseException) -> bool:
    """A refused login, whether raised here or copied over PB."""
    from twisted.cred.error import UnauthorizedLogin

    remote = getattr(exc, "remoteType", b"")
    if isinstance(remote, bytes):
        remote = remote.decode("ascii", "replace")
    return isinstance(exc, UnauthorizedLogin) or remote == "twisted.cred.error.UnauthorizedLogin"
