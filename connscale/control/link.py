"""A long-lived, logged-in link to the hub's controller.

Twisted's `ClientService` keeps one connection up (reconnecting with backoff);
every new connection logs in again (the mutual exchange of `login`) and then
runs `on_login` (an agent registers there). A keepalive asks the hub to answer
every few seconds and drops a connection whose hub has gone silent (stopped,
or its network cut), so the next attempt starts at once instead of waiting
for TCP to give up. Failures are classified: a refused login or a hub that
cannot prove the secret is final (`on_refused`, no retry); a login the hub
throttled (failed logins from our address, someone else's perhaps) is retried
after the wait the hub names; anything else is a lost link (`on_lost`) and is
retried with backoff.

Agents use it for their whole life; `connscale run` can use it for its
operator session (`when_logged_in` gives the perspective).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import implementer

from connscale.control import dial
from connscale.control.auth import CredentialError, Credentials
from connscale.control.guard import ControlClientFactory
from connscale.control.login import authenticate

__all__ = ["KEEPALIVE", "KEEPALIVE_TIMEOUT", "LOGIN_TIMEOUT", "HubLink", "describe_refusal", "is_refusal"]

log = Logger(namespace="connscale.link")

#: Seconds between keepalive calls.
KEEPALIVE = 2.0
#: A hub that has not answered a keepalive for this long is gone: reconnect.
KEEPALIVE_TIMEOUT = 6.0
#: Seconds a login (and on_login) may take on a fresh connection.
LOGIN_TIMEOUT = 10.0


def is_refusal(failure: Failure) -> bool:
    """A final answer (wrong secret, hub without the secret, registration refused), not a lost link."""
    exc = failure.value
    if dial.is_throttled(failure):
        return False
    if isinstance(exc, CredentialError) or dial.is_unauthorized(failure):
        return True
    return isinstance(exc, pb.RemoteError) and "ControlError" in str(getattr(exc, "remoteType", b""))


def one_line(failure: Failure) -> str:
    text = str(failure.value).strip() or repr(failure.value)
    return text.splitlines()[-1]


def describe_refusal(exc: BaseException, where: str) -> str:
    """One line for a final answer, saying who refused what."""
    from connscale.control.login import HubNotAuthentic

    text = (str(exc).strip() or repr(exc)).splitlines()[-1]
    if isinstance(exc, HubNotAuthentic):
        return f"wrong control secret: the controller {where} did not prove it knows ours (or it is not our hub)"
    if isinstance(exc, CredentialError):
        return text
    if dial.is_unauthorized(exc):
        return f"the controller {where} refused our login: {text}"
    return f"the controller {where} refused our registration: {text}"


@implementer(IStreamClientEndpoint)
class _LoggingEndpoint:
    """The controller's endpoint, saying once per distinct reason why it cannot be reached."""

    def __init__(self, endpoint: Any, where: str) -> None:
        self.endpoint = endpoint
        self.where = where
        self.last = ""

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        def failed(f: Failure) -> Failure:
            why = f.getErrorMessage()
            if why != self.last:
                self.last = why
                log.warn("controller {where} unreachable ({why}); retrying with backoff", where=self.where, why=why)
            return f

        def connected(proto: Any) -> Any:
            self.last = ""
            return proto

        return self.endpoint.connect(factory).addCallbacks(connected, failed)


class HubLink(Service):
    def __init__(
        self,
        reactor: Any,
        address: tuple[str, int],
        username: str,
        credentials: Credentials,
        *,
        tls_ca: str | None = None,
        mind: pb.Referenceable | None = None,
        on_login: Callable[[pb.RemoteReference], Any] | None = None,
        on_lost: Callable[[str], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
        keepalive: float = KEEPALIVE,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        retry: Callable[[int], float] | None = None,
        endpoint: Any = None,
    ) -> None:
        self.reactor = reactor
        self.address = address
        self.where = f"{address[0]}:{address[1]}"
        self.username = username
        self.credentials = credentials
        self.mind = mind
        self.on_login = on_login
        self.on_lost = on_lost
        self.on_refused = on_refused
        self.keepalive = keepalive
        self.keepalive_timeout = keepalive_timeout
        self.perspective: pb.RemoteReference | None = None
        #: Times a logged-in session ended (hub gone, network cut, keepalive timeout).
        self.losses = 0
        self.refused: str | None = None
        self._broker: Any = None
        self._answered_at = 0.0
        self._waiters: list[defer.Deferred[pb.RemoteReference]] = []
        self._beat = LoopingCall(self._ping)
        self._beat.clock = reactor
        if endpoint is None:
            endpoint = dial.controller_endpoint(reactor, address[0], address[1], tls_ca)
        policy = retry or backoffPolicy(initialDelay=0.5, maxDelay=15.0, factor=2.0)
        #: Logins failed in a row: a hub that accepts connections but cannot log us in
        #: backs off like one that refuses them (ClientService counts connects only).
        self._login_failures = 0
        #: The wait a throttled login was told (0 when the last attempt was not throttled).
        self._throttled_for = 0.0
        self.service = ClientService(
            _LoggingEndpoint(endpoint, self.where), ControlClientFactory(),
            retryPolicy=lambda attempts: max(policy(max(attempts, self._login_failures)), self._throttled_for),
            clock=reactor, prepareConnection=self._prepare,
        )

    # -- service ---------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.service.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        if self._beat.running:
            self._beat.stop()
        return self.service.stopService()

    def when_logged_in(self) -> defer.Deferred[pb.RemoteReference]:
        if self.perspective is not None:
            return defer.succeed(self.perspective)
        d: defer.Deferred[pb.RemoteReference] = defer.Deferred()
        self._waiters.append(d)
        return d

    # -- each connection ---------------------------------------------------------------
    @defer.inlineCallbacks
    def _prepare(self, broker: Any):
        """Log in (and run on_login) on a fresh connection.

        A failed login closes the connection and never fails this Deferred:
        ClientService then sees a connection that ended (and retries, backing
        off by `_login_failures`) rather than a failed preparation, after
        which it has no state for the connection's end.
        """
        try:
            yield broker.negotiated
            root = broker.remoteForName("root")
            login = authenticate(root, self.username, self.credentials, self.mind, self.where)
            login.addTimeout(LOGIN_TIMEOUT, self.reactor)
            perspective = yield login
            if self.on_login is not None:
                step = defer.maybeDeferred(self.on_login, perspective)
                step.addTimeout(LOGIN_TIMEOUT, self.reactor)
                yield step
        except Exception:
            failure = Failure()
            self._login_failures += 1
            broker.transport.abortConnection()
            self._throttled_for = dial.retry_after(failure) if dial.is_throttled(failure) else 0.0
            if self._throttled_for:
                log.warn("controller {where} throttled our login ({why}); retrying in {wait:.0f} s",
                         where=self.where, why=one_line(failure), wait=self._throttled_for)
            elif is_refusal(failure):
                self._refuse(describe_refusal(failure.value, self.where))
            else:
                log.warn("controller {where}: login failed ({why}); retrying", where=self.where,
                         why=one_line(failure))
            return None
        self._login_failures = 0
        self._throttled_for = 0.0
        self._connected(broker, perspective)
        return None

    def _connected(self, broker: Any, perspective: pb.RemoteReference) -> None:
        self._broker = broker
        self.perspective = perspective
        self._answered_at = self.reactor.seconds()
        broker.notifyOnDisconnect(lambda: self._disconnected(broker))
        if not self._beat.running and self.keepalive:
            self._beat.start(self.keepalive, now=False)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(perspective)

    def _disconnected(self, broker: Any) -> None:
        if broker is not self._broker:
            return
        self._broker = None
        self.perspective = None
        if self._beat.running:
            self._beat.stop()
        self.losses += 1
        if self.running:
            log.warn("lost the controller {where}; reconnecting", where=self.where)
            if self.on_lost is not None:
                self.on_lost("the connection to the controller closed")

    def _refuse(self, message: str) -> None:
        self.refused = message
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(Failure(RuntimeError(message)))
        # No retry: a wrong secret stays wrong.
        self.reactor.callLater(0, self.service.stopService)
        if self.on_refused is not None:
            self.on_refused(message)

    # -- keepalive -----------------------------------------------------------------------
    def _ping(self) -> None:
        perspective, broker = self.perspective, self._broker
        if perspective is None or broker is None:
            return
        silent = self.reactor.seconds() - self._answered_at
        if silent >= self.keepalive_timeout:
            log.warn("the controller {where} has not answered for {silent:.0f} s; reconnecting",
                     where=self.where, silent=silent)
            broker.transport.abortConnection()
            return

        def answered(_: Any) -> None:
            self._answered_at = self.reactor.seconds()

        perspective.callRemote("keepalive").addCallbacks(answered, lambda _: None)
