"""Listening now, with one line when it cannot: the one way connscale opens a server port.

The server workers bind their own SO_REUSEPORT sockets (`server.bind_sockets`, whose
errors are `ListenError` too); everything else that listens on an endpoint string
(the hub's controller, the console) is an `EndpointService`. `ListeningService` holds
the server's pre-bound sockets in a twistd application. All bind before
anything else starts, so a port in use stops start-up with one line naming the
config key, the endpoint and the reason, instead of a traceback in a log.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from connscale.config.tls import ServerTLSSettings
from connscale.net.server import ListenError, serve

__all__ = ["EndpointService", "ListenError", "ListeningService"]

log = Logger(namespace="connscale.listen")


class ListeningService(Service):
    """Adopts pre-bound sockets into the reactor while the service runs."""

    def __init__(self, reactor: IReactorSocket, sockets: Sequence[socket.socket], factory: ServerFactory,
                 tls: ServerTLSSettings | None = None, fast_path: bool | None = None) -> None:
        self.reactor = reactor
        self.sockets = list(sockets)
        self.factory = factory
        self.fast_path = fast_path
        self.tls = tls
        self.ports: list[IListeningPort] = []

    def startService(self) -> None:
        super().startService()
        self.ports.extend(serve(self.reactor, self.sockets, self.factory, self.tls, self.fast_path))
        self.sockets = []

    def stopService(self):
        super().stopService()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])

    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for p in self.ports:
            h = p.getHost()
            assert isinstance(h, (IPv4Address, IPv6Address))  # TCP ports, ours and Twisted's
            out.append((h.host, h.port))
        return out


def _why(error: BaseException) -> str:
    """EADDRINUSE (Address already in use), as the server's own sockets say it."""
    cause = getattr(error, "socketError", None) or error
    number = getattr(cause, "errno", None)
    if number:
        return f"{errno.errorcode.get(number, number)} ({os.strerror(number)})"
    return str(error) or type(error).__name__


class EndpointService(Service):
    """Listens on `description` with `factory`; `port` is the IListeningPort once bound.

    Binding happens in `listen()` (called by privilegedStartService, or at once
    with `listen_now=True`), like strports.service but failing loudly: an endpoint
    that fails synchronously (EADDRINUSE, EACCES) raises `error_class` with one line.
    """

    error_class: type[Exception] = ListenError

    def __init__(self, reactor: Any, description: str, factory: Any, key: str, what: str = "",
                 listen_now: bool = False, label: str | None = None) -> None:
        self.reactor = reactor
        self.description = description
        self.key = key
        self.label = label or key
        self.what = what
        self.factory = factory
        # Here, not at the top: server workers import this module for ListenError
        # and never parse an endpoint (twisted.internet.endpoints is ~0.4 MB each).
        from twisted.internet import endpoints

        self.endpoint = endpoints.serverFromString(reactor, description)
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[IListeningPort] | None = None
        self._waiters: list[defer.Deferred[IListeningPort]] = []
        self._error: Failure | None = None
        self._starting = False
        if listen_now:
            self.listen()

    def when_listening(self) -> defer.Deferred[IListeningPort]:
        """Fires with the IListeningPort (at once if already bound)."""
        if self.port is not None:
            return defer.succeed(self.port)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._waiters.append(d)
        return d

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        if self._listening is None and self.port is None:
            self.listen()

    def startService(self) -> None:
        super().startService()
        if self._listening is None and self.port is None:
            self.listen()

    def listen(self) -> None:
        self._error = None
        self._starting = True
        self._listening = self.endpoint.listen(self.factory)
        self._listening.addCallbacks(self._bound, self._failed)
        self._starting = False
        if self._error is not None:
            self._listening = None
            error = self._error.value
            if isinstance(error, self.error_class):
                raise error
            raise self.error_class(f"{self.key}: cannot listen on {self.description}: {_why(error)}")

    def check_bound(self, port: IListeningPort) -> None:
        """Refuse a socket that is not what the endpoint promised (raise `error_class`)."""

    def _failed(self, failure: Failure) -> None:
        self._error = failure
        if not self._starting and not failure.check(defer.CancelledError):  # else raised
            log.failure("{key}: cannot listen on {description}", failure, key=self.key,
                        description=self.description)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(failure)

    def _bound(self, port: IListeningPort) -> IListeningPort | None:
        try:
            self.check_bound(port)
        except Exception:
            port.stopListening()
            self._failed(Failure())
            return None
        self.port = port
        host = port.getHost()
        log.info("{label} listening on {host}:{port}{what}", label=self.label, host=getattr(host, "host", host),
                 port=getattr(host, "port", ""), what=f"; {self.what}" if self.what else "")
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)
        return port

    def stopService(self) -> defer.Deferred[None] | None:
        super().stopService()
        listening, self._listening = self._listening, None
        port, self.port = self.port, None
        if port is not None:
            # Twisted's overloads of maybeDeferred match no `Deferred | None` return (Twisted 26.10).
            return defer.maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        if listening is not None:
            listening.cancel()
        return None
