"""Logging in to the controller, on both ends.

The hub's PB root is a `LoginGate` speaking the exchange of `auth` in three
calls: `hello` (who, and which hub was dialled; answers the salt and an
`Exchange`), `start` (the peer's SPAKE2 message; answers the hub's and the
hub's confirmation) and `confirm` (the peer's confirmation and its mind;
answers the avatar). `authenticate` is the peer's side (agents, `ctl`, `run`).
The exchange is bound to the connection's TLS channel (`channel.binding`): a
connection without TLS cannot log in.

Every step checks the throttle (`throttle.LoginThrottle`: one exchange in
flight per peer, each that does not prove the password counted as a failed
login); a throttled peer is refused with `LoginThrottled`, which says how long
to wait. The connection under the login is a `guard.GuardedBroker` (bounded
input, a login deadline).

The errors stay here, whatever else moves: PB copies a refusal to the peer
under its class's full name (`connscale.control.login.LoginRefused`), and our
peers (`dial`) recognise it by that name.
"""

from __future__ import annotations

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

from connscale.control import channel
from connscale.control.auth import (
    CredentialError,
    Credentials,
    LoginExchange,
    confirmation,
    parse_username,
    transcript,
)
from connscale.control.guard import GuardedBroker
from connscale.control.peer import peer_key
from connscale.control.throttle import LoginThrottle, TooManyWaiting

__all__ = [
    "HubNotAuthentic", "LoginGate", "LoginRefused", "LoginRoot", "LoginThrottled", "ProofChecker",
    "authenticate",
]

log = Logger(namespace="connscale.control.login")

#: What a peer says first (`hello`); any other version is refused before a word more. 3: every
#: agent answers `report_packed` and takes `apply_packed` alone (the plain `report`/`apply`
#: are gone, and an agent of 2 may not offer the packed ones); 2: the SPAKE2 login.
PROTOCOL_VERSION = 3


class HubNotAuthentic(cred_error.UnauthorizedLogin):
    """The hub failed to prove it knows the password: not our hub, a different secret, or a relay."""


class LoginRefused(pb.Error):
    """The hub refused a login; crosses PB as its one-line message (and, being a pb.Error,
    without a traceback in the hub's log for every attempt: the throttle logs those)."""


class LoginThrottled(LoginRefused):
    """Too many failed logins from this peer for now: retry after the time it says."""


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

    def requestAvatarId(self, creds: ProvenLogin) -> defer.Deferred[bytes | tuple[()]]:
        if creds.check():
            return defer.succeed(creds.username)
        return defer.fail(cred_error.UnauthorizedLogin("wrong control secret"))


@implementer(IPBRoot)
class LoginRoot:
    """The hub's PB root: a fresh gate for every connection."""

    def __init__(self, portal: Portal, credentials: Credentials, salt: bytes) -> None:
        self.portal = portal
        self.credentials = credentials
        self.salt = salt

    def rootObject(self, broker: pb.Broker) -> LoginGate:
        return LoginGate(self, broker)


class LoginGate(pb.Referenceable):
    """One connection's way in: `hello` once, then `start` and `confirm` once each on its Exchange."""

    def __init__(self, root: LoginRoot, broker: pb.Broker) -> None:
        self.root = root
        self.broker = broker
        self.used = False

    @property
    def throttle(self) -> LoginThrottle | None:
        return getattr(self.broker.factory, "throttle", None)

    @property
    def peer(self) -> str:
        return self.broker.peer if isinstance(self.broker, GuardedBroker) else peer_key(self.broker.transport)

    def refuse(self, reason: str, kind: str = "login", error: type[LoginRefused] = LoginRefused) -> LoginRefused:
        """Count and log the refusal (one line per interval), answer it, then hang up."""
        throttle = self.throttle
        if throttle is not None:
            throttle.refuse(self.peer, kind, reason)
        clock = getattr(self.broker.factory, "clock", None)
        if clock is not None:
            # Closed, not aborted: the answer is still on its way (the login deadline aborts
            # a peer that does not read it).
            def close() -> None:
                if self.broker.transport:
                    self.broker.transport.loseConnection()

            clock.callLater(0, close)
        return error(reason)

    def check_throttle(self) -> None:
        throttle = self.throttle
        if throttle is not None and (wait := throttle.blocked_for(self.peer)):
            raise self.refuse(f"too many failed logins from {self.peer}; try again in {max(wait, 1):.0f} s",
                              "throttled", LoginThrottled)

    def remote_hello(self, version: object, username: object, dialled: object) -> list[Any]:
        self.check_throttle()
        if self.used:
            raise self.refuse("one login per connection", "protocol")
        self.used = True
        if version != PROTOCOL_VERSION:
            raise self.refuse(f"control protocol {version!r:.20} is not ours ({PROTOCOL_VERSION}): "
                              "run the same connscale version on the hub and its peers", "protocol")
        if not isinstance(username, str) or len(username) > 80:
            raise self.refuse("a login name is text of at most 80 characters", "protocol")
        if not isinstance(dialled, str) or len(dialled) > 300 or not dialled.isprintable():
            raise self.refuse("the hub as dialled is text of at most 300 printable characters", "protocol")
        try:
            parse_username(username)
        except CredentialError as e:
            raise self.refuse(str(e), "protocol") from None
        binding = channel.binding(self.broker.transport)
        if binding is None:
            raise self.refuse("the control connection is not TLS: a login needs it", "protocol")
        return [self.root.salt, Exchange(self, username, transcript(username, dialled, self.root.salt, binding))]


class Exchange(pb.Referenceable):
    """The SPAKE2 exchange of one login, bound to its transcript."""

    def __init__(self, gate: LoginGate, username: str, transcript_: bytes) -> None:
        self.gate = gate
        self.username = username
        self.transcript = transcript_
        self.key: bytes | None = None
        self.step = "hello"  # hello -> started -> done

    def remote_start(self, message: object) -> defer.Deferred[list[bytes]]:
        gate = self.gate
        gate.check_throttle()
        if self.step != "hello":
            raise gate.refuse("one login per connection", "protocol")
        self.step = "waiting"
        throttle = gate.throttle
        if throttle is None:
            return defer.maybeDeferred(self._start, message)
        peer = gate.peer
        # From here the peer can test one guess of the password: one at a time per peer, and
        # each counts as failed unless its confirmation proves it right.
        turn = throttle.acquire(peer)

        def go(_: Any) -> list[bytes]:
            self.holding = True
            if gate.broker.disconnected:
                self._done(failed=False)
                raise LoginRefused("the connection closed")
            gate.broker.notifyOnDisconnect(lambda: self._done(failed=True))
            gate.check_throttle()
            return self._start(message)

        def refused(failure: Any) -> Any:
            if self.holding:
                self._done(failed=False)  # refused at its turn (and counted there)
            elif failure.check(TooManyWaiting):
                # No turn: too many waiting.
                raise gate.refuse(failure.getErrorMessage(), "throttled", LoginThrottled)
            return failure

        return turn.addCallback(go).addErrback(refused)

    holding = False

    def _done(self, failed: bool) -> None:
        """Give the peer's turn back (once), counting a failure unless the password was proved."""
        if self.holding:
            self.holding = False
            throttle = self.gate.throttle
            if throttle is not None:
                throttle.release(self.gate.peer, failed)

    def _start(self, message: object) -> list[bytes]:
        gate = self.gate
        self.step = "started"
        try:
            password = gate.root.credentials.password(self.username, gate.root.salt)
            exchange = LoginExchange("hub", password, self.transcript)
            ours = exchange.start()
            self.key = exchange.finish(message)
        except CredentialError as e:
            raise gate.refuse(str(e), "protocol") from None
        return [ours, confirmation(self.key, "hub")]

    def remote_confirm(self, given: object, mind: Any) -> defer.Deferred[Any]:
        gate = self.gate
        if self.step != "started" or self.key is None:
            raise gate.refuse("one login per connection", "protocol")
        self.step = "done"
        d = gate.root.portal.login(ProvenLogin(self.username, confirmation(self.key, "peer"), given), mind,
                                   pb.IPerspective)
        d.addCallbacks(self._logged_in, self._failed)
        return d

    def _logged_in(self, result: tuple[Any, Any, Callable[[], None]]) -> Any:
        _, avatar, logout = result
        gate = self.gate
        broker = gate.broker
        self._done(failed=False)
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
        self._done(failed=True)
        raise self.gate.refuse(reason)


# ---------------------------------------------------------------- the peer's side


class ChannelError(CredentialError):
    """Our own connection to the hub is not TLS: we cannot bind a login to it."""


@defer.inlineCallbacks
def authenticate(root: pb.RemoteReference, username: str, credentials: Credentials,
                 mind: pb.Referenceable | None = None, dialled: str = ""):
    """Log in over `root` as `username` to the hub we dialled as `dialled`; fires with the perspective.

    Fails with `HubNotAuthentic` when the hub does not prove the password (our
    own confirmation is then never sent), `LoginRefused` (or `LoginThrottled`,
    copied over PB) when the hub refuses, `CredentialError` when we hold no key
    for that role or name.
    """
    credentials.check_role(username)
    broker = getattr(root, "broker", None)
    binding = channel.binding(getattr(broker, "transport", None))
    if binding is None:
        raise ChannelError("the connection to the controller is not TLS: cannot log in over it")
    answer = yield root.callRemote("hello", PROTOCOL_VERSION, username, dialled)
    try:
        salt, exchange = answer
    except (TypeError, ValueError):
        raise HubNotAuthentic("the controller answered the login with nonsense") from None
    if not isinstance(salt, bytes) or not isinstance(exchange, pb.RemoteReference):
        raise HubNotAuthentic("the controller answered the login with nonsense")
    ours = LoginExchange("peer", credentials.password(username, salt), transcript(username, dialled, salt, binding))
    answer = yield exchange.callRemote("start", ours.start())
    try:
        theirs, hub_confirm = answer
        key = ours.finish(theirs)
    except (TypeError, ValueError, CredentialError):
        raise HubNotAuthentic("the controller answered the login with nonsense") from None
    if not isinstance(hub_confirm, bytes) or not hmac.compare_digest(hub_confirm, confirmation(key, "hub")):
        raise HubNotAuthentic("the controller did not prove it knows the control secret "
                              "(a different secret, not our hub, or a relay)")
    perspective = yield exchange.callRemote("confirm", confirmation(key, "peer"), mind)
    if isinstance(broker, GuardedBroker):
        broker.login_succeeded()  # from now on each message is bounded, not the sum
    return perspective
