"""Logging in to the controller, on both ends, and guarding the connection.

The hub's PB root is a `LoginGate` speaking the mutual exchange of `auth`
(`hello`, then `respond`): the hub proves it knows the role's key first, the
peer second, and only then does the portal hand out an avatar. `authenticate`
is the peer's side of the same exchange (agents, `ctl`, `run`).

Every control connection is a `GuardedBroker`: before login it may send only
`PRELOGIN_BYTES` and must log in within `LOGIN_TIMEOUT` seconds; after login no
single message may exceed `MESSAGE_BYTES` (Banana caps each string and list at
640 KiB, but not their sum). Failed logins are counted per peer address: after
`THROTTLE_FAILURES` in `THROTTLE_WINDOW` seconds that address is refused at once
for the rest of the window, and refusals are logged once per interval, not once
per attempt.
"""

from __future__ import annotations

import collections
import hmac
from collections.abc import Callable
from typing import Any

from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.spread import pb
from twisted.spread.flavors import IPBRoot
from twisted.spread.jelly import IJellyable
from zope.interface import Interface, implementer

from connscale.control.auth import NONCE_BYTES, CredentialError, Credentials, proof, role_of

__all__ = [
    "LOGIN_TIMEOUT", "MESSAGE_BYTES", "PRELOGIN_BYTES", "ControlClientFactory", "ControlServerFactory",
    "GuardedBroker", "HubNotAuthentic", "LoginGate", "LoginRefused", "LoginRoot", "LoginThrottle", "ProofChecker",
    "authenticate",
]

log = Logger(namespace="connscale.control.login")

PROTOCOL_VERSION = 1
#: Seconds a connection has to log in before it is dropped.
LOGIN_TIMEOUT = 5.0
#: Bytes a peer may send before it has logged in (a login is a few hundred).
PRELOGIN_BYTES = 16 * 1024
#: Bytes one PB message may take after login (a report of 4096 workers fits).
MESSAGE_BYTES = 4 * 1024 * 1024
THROTTLE_FAILURES = 5
THROTTLE_WINDOW = 10.0
#: At most one log line about refused connections per this many seconds.
LOG_INTERVAL = 10.0
#: Peer addresses the throttle remembers (oldest forgotten first).
MAX_TRACKED = 4096


class HubNotAuthentic(cred_error.UnauthorizedLogin):
    """The hub failed to prove it knows the key: not our hub, or a different secret."""


class LoginRefused(pb.Error):
    """The hub refused a login; crosses PB as its one-line message (and, being a pb.Error,
    without a traceback in the hub's log for every attempt: the throttle logs those)."""


# ---------------------------------------------------------------- throttle


class LoginThrottle:
    """Failed logins per peer address, and a log that speaks once per interval."""

    def __init__(self, clock: Any, failures: int = THROTTLE_FAILURES, window: float = THROTTLE_WINDOW,
                 log_interval: float = LOG_INTERVAL) -> None:
        self.clock = clock
        self.failures = failures
        self.window = window
        self.log_interval = log_interval
        self._recent: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._last_reason = ""
        self._flush: Any = None
        self._logged_at = -float("inf")
        #: Every refusal so far, by kind (tests and stats read it).
        self.refused: collections.Counter[str] = collections.Counter()

    def blocked_for(self, host: str) -> float:
        """Seconds this address must wait before it may try again (0: it may)."""
        times = self._recent.get(host)
        if not times or len(times) < self.failures:
            return 0.0
        left = times[0] + self.window - self.clock.seconds()
        return max(0.0, left)

    def failed(self, host: str, reason: str) -> None:
        times = self._recent.pop(host, None) or collections.deque(maxlen=self.failures)
        times.append(self.clock.seconds())
        self._recent[host] = times
        while len(self._recent) > MAX_TRACKED:
            self._recent.popitem(last=False)
        self.refuse(host, "login", reason)

    def refuse(self, host: str, kind: str, reason: str) -> None:
        """Count a refused connection; logged with the others at the next interval."""
        self.refused[kind] += 1
        self._unlogged[host] += 1
        self._last_reason = f"{kind}: {reason}"
        now = self.clock.seconds()
        if now - self._logged_at >= self.log_interval:
            self._log()
        elif self._flush is None or not self._flush.active():
            self._flush = self.clock.callLater(self._logged_at + self.log_interval - now, self._log)

    def _log(self) -> None:
        self._flush = None
        if not self._unlogged:
            return
        self._logged_at = self.clock.seconds()
        total = sum(self._unlogged.values())
        hosts = ", ".join(f"{h} x{n}" for h, n in self._unlogged.most_common(5))
        more = len(self._unlogged) - 5
        log.warn(
            "control: refused {total} connection(s) in the last {interval:g} s from {hosts}{more} (last: {reason})",
            total=total, interval=self.log_interval, hosts=hosts, more=f" and {more} more" if more > 0 else "",
            reason=self._last_reason,
        )
        self._unlogged.clear()


def _peer_host(broker: pb.Broker) -> str:
    peer = broker.transport.getPeer() if broker.transport is not None else None
    return str(getattr(peer, "host", peer))


# ---------------------------------------------------------------- the guarded connection


class GuardedBroker(pb.Broker):
    """A PB broker with a login deadline and bounded input (see the module docstring)."""

    logged_in = False
    _timer: Any = None

    def connectionMade(self) -> None:
        self._prelogin = 0
        self._since = 0
        self._completed = False
        #: Fires once PB is ready to carry calls (Banana's dialect is agreed).
        self.negotiated: defer.Deferred[GuardedBroker] = defer.Deferred()
        super().connectionMade()
        factory = self.factory
        clock = getattr(factory, "clock", None)
        if not self.isClient and clock is not None:
            self._timer = clock.callLater(getattr(factory, "login_timeout", LOGIN_TIMEOUT), self._too_slow)

    def connectionReady(self) -> None:
        super().connectionReady()
        if not self.negotiated.called:
            self.negotiated.callback(self)

    def login_succeeded(self) -> None:
        self.logged_in = True
        self._since = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def _too_slow(self) -> None:
        if not self.logged_in and not self.disconnected:
            self.refuse("timeout", f"not logged in within {getattr(self.factory, 'login_timeout', LOGIN_TIMEOUT):g} s")

    def refuse(self, kind: str, reason: str) -> None:
        throttle = getattr(self.factory, "throttle", None)
        if throttle is not None:
            throttle.refuse(_peer_host(self), kind, reason)
        else:
            log.warn("control connection to {peer} closed: {reason}", peer=_peer_host(self), reason=reason)
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.disconnected:
            return
        size = len(data)
        if not self.logged_in:
            self._prelogin += size
            limit = getattr(self.factory, "prelogin_bytes", PRELOGIN_BYTES)
            if self._prelogin > limit:
                self.refuse("size", f"more than {limit} bytes before logging in")
                return
        else:
            self._since += size
            limit = getattr(self.factory, "message_bytes", MESSAGE_BYTES)
            if self._since > limit:
                self.refuse("size", f"a message of more than {limit} bytes")
                return
        self._completed = False
        super().dataReceived(data)
        if self._completed:
            # Whatever follows the last complete message came in this chunk:
            # the next message has at most this many bytes so far.
            self._since = size

    def expressionReceived(self, obj: Any) -> None:
        self._completed = True
        super().expressionReceived(obj)

    def connectionLost(self, reason: Any) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        negotiated = getattr(self, "negotiated", None)
        if negotiated is not None and not negotiated.called:
            negotiated.errback(pb.PBConnectionLost("the connection closed before PB was ready"))
        super().connectionLost(reason)


class ControlServerFactory(pb.PBServerFactory):
    """The hub's control port: a `LoginGate` per connection, every broker guarded."""

    protocol = GuardedBroker

    def __init__(self, root: Any, clock: Any, throttle: LoginThrottle | None = None,
                 login_timeout: float = LOGIN_TIMEOUT, prelogin_bytes: int = PRELOGIN_BYTES,
                 message_bytes: int = MESSAGE_BYTES) -> None:
        super().__init__(root)
        self.clock = clock
        self.throttle = throttle if throttle is not None else LoginThrottle(clock)
        self.login_timeout = login_timeout
        self.prelogin_bytes = prelogin_bytes
        self.message_bytes = message_bytes
        self.noisy = False


class ControlClientFactory(pb.PBClientFactory):
    """An agent's, ctl's or run's end: the hub's answers are bounded too."""

    protocol = GuardedBroker
    prelogin_bytes = PRELOGIN_BYTES
    message_bytes = MESSAGE_BYTES
    noisy = False


# ---------------------------------------------------------------- the hub's side


class IProvenLogin(Interface):
    """A login whose proof is checked by `ProofChecker`."""


@implementer(IProvenLogin, ICredentials)
class ProvenLogin:
    def __init__(self, username: str, expected: bytes, given: object) -> None:
        self.username = username.encode("utf-8")
        self._expected = expected
        self._given = given

    def check(self) -> bool:
        return isinstance(self._given, bytes) and hmac.compare_digest(self._expected, self._given)


@implementer(ICredentialsChecker)
class ProofChecker:
    credentialInterfaces = (IProvenLogin,)

    def requestAvatarId(self, creds: ProvenLogin) -> defer.Deferred[bytes]:
        if creds.check():
            return defer.succeed(creds.username)
        return defer.fail(cred_error.UnauthorizedLogin("wrong control secret"))


@implementer(IPBRoot)
class LoginRoot:
    """The hub's PB root: a fresh gate for every connection."""

    def __init__(self, portal: Portal, credentials: Credentials) -> None:
        self.portal = portal
        self.credentials = credentials

    def rootObject(self, broker: pb.Broker) -> LoginGate:
        return LoginGate(self.portal, self.credentials, broker)


class LoginGate(pb.Referenceable):
    """One connection's way in: `hello` once, then `respond` once on the challenge it returns."""

    def __init__(self, portal: Portal, credentials: Credentials, broker: pb.Broker) -> None:
        self.portal = portal
        self.credentials = credentials
        self.broker = broker
        self.used = False

    @property
    def throttle(self) -> LoginThrottle | None:
        return getattr(self.broker.factory, "throttle", None)

    def _refuse(self, reason: str) -> LoginRefused:
        # Answer first (the peer learns why), then hang up.
        clock = getattr(self.broker.factory, "clock", None)
        if clock is not None:
            clock.callLater(0, lambda: self.broker.transport and self.broker.transport.loseConnection())
        return LoginRefused(reason)

    def remote_hello(self, version: object, username: object, peer_nonce: object) -> list[Any]:
        host = _peer_host(self.broker)
        throttle = self.throttle
        if throttle is not None and (wait := throttle.blocked_for(host)):
            throttle.refuse(host, "throttled", "too many failed logins")
            raise self._refuse(f"too many failed logins from {host}; try again in {wait:.0f} s")
        if self.used:
            raise self._refuse("one login per connection")
        self.used = True
        if version != PROTOCOL_VERSION:
            raise self._refuse(f"control protocol {version!r:.20} is not ours ({PROTOCOL_VERSION}): "
                               "run the same connscale version on the hub and its peers")
        if not isinstance(username, str) or len(username) > 80:
            raise self._refuse("a login name is text of at most 80 characters")
        if not isinstance(peer_nonce, bytes) or len(peer_nonce) != NONCE_BYTES:
            raise self._refuse(f"a login nonce is {NONCE_BYTES} bytes")
        try:
            key = self.credentials.key(role_of(username))
        except CredentialError as e:
            if throttle is not None:
                throttle.failed(host, str(e))
            raise self._refuse(str(e)) from None
        hub_nonce = Credentials.nonce()
        challenge = Challenge(self, username, proof(key, "peer", username, peer_nonce, hub_nonce))
        return [hub_nonce, proof(key, "hub", username, peer_nonce, hub_nonce), challenge]


class Challenge(pb.Referenceable):
    def __init__(self, gate: LoginGate, username: str, expected: bytes) -> None:
        self.gate = gate
        self.username = username
        self.expected = expected
        self.answered = False

    def remote_respond(self, given: object, mind: Any) -> defer.Deferred[Any]:
        gate = self.gate
        if self.answered:
            raise gate._refuse("one login per connection")
        self.answered = True
        d = gate.portal.login(ProvenLogin(self.username, self.expected, given), mind, pb.IPerspective)
        d.addCallbacks(self._logged_in, self._failed)
        return d

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]]) -> Any:
        _, avatar, logout = result
        broker = self.gate.broker
        if not IJellyable.providedBy(avatar):
            avatar = pb.AsReferenceable(avatar, "perspective")
        done: list[bool] = []

        def once() -> None:
            if not done:
                done.append(True)
                logout()

        broker.notifyOnDisconnect(once)
        if isinstance(broker, GuardedBroker):
            broker.login_succeeded()
        return avatar

    def _failed(self, failure: Any) -> Any:
        reason = failure.getErrorMessage() if failure.check(cred_error.UnauthorizedLogin) else "login failed"
        if not failure.check(cred_error.UnauthorizedLogin):
            log.failure("login of {name} failed", failure, name=self.username)
        throttle = self.gate.throttle
        if throttle is not None:
            throttle.failed(_peer_host(self.gate.broker), reason)
        raise self.gate._refuse(reason)


# ---------------------------------------------------------------- the peer's side


@defer.inlineCallbacks
def authenticate(root: pb.RemoteReference, username: str, credentials: Credentials,
                 mind: pb.Referenceable | None = None):  # type: ignore[no-untyped-def]
    """Log in over `root` as `username`; fires with the perspective.

    Fails with `HubNotAuthentic` when the hub does not prove the key (our own
    proof is then never sent), `UnauthorizedLogin` when the hub refuses ours,
    `CredentialError` when we hold no key for that role.
    """
    key = credentials.key(role_of(username))
    peer_nonce = Credentials.nonce()
    answer = yield root.callRemote("hello", PROTOCOL_VERSION, username, peer_nonce)
    try:
        hub_nonce, hub_proof, challenge = answer
    except (TypeError, ValueError):
        raise HubNotAuthentic("the controller answered the login with nonsense") from None
    if (not isinstance(hub_nonce, bytes) or len(hub_nonce) != NONCE_BYTES or not isinstance(hub_proof, bytes)
            or not isinstance(challenge, pb.RemoteReference)):
        raise HubNotAuthentic("the controller answered the login with nonsense")
    if not hmac.compare_digest(hub_proof, proof(key, "hub", username, peer_nonce, hub_nonce)):
        raise HubNotAuthentic("the controller did not prove it knows the control secret "
                              "(a different secret, or not our hub)")
    perspective = yield challenge.callRemote("respond", proof(key, "peer", username, peer_nonce, hub_nonce), mind)
    broker = getattr(root, "broker", None)
    if isinstance(broker, GuardedBroker):
        broker.login_succeeded()  # from now on each message is bounded, not the sum
    return perspective
