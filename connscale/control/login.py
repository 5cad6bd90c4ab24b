"""Logging in to the controller, on both ends, and guarding the connection.

The hub's PB root is a `LoginGate` speaking the exchange of `auth` in three
calls: `hello` (who, and which hub was dialled; answers the salt and an
`Exchange`), `start` (the peer's SPAKE2 message; answers the hub's and the
hub's confirmation) and `confirm` (the peer's confirmation and its mind;
answers the avatar). `authenticate` is the peer's side (agents, `ctl`, `run`).
The exchange is bound to the connection's TLS channel (`channel.binding`): a
connection without TLS cannot log in.

The throttle counts guesses, not connections: a peer (`peer.peer_key`: the
address, and on loopback the local user owning the socket) has one exchange
in flight at a time (`start` waits its turn; a fleet logging in at once from
one address queues), and each that does not end in a proved password counts
as a failed login, so parallel connections cannot get past it; every step
checks it. After
`THROTTLE_FAILURES` in `THROTTLE_WINDOW` seconds that peer is refused with
`LoginThrottled`, which says how long to wait and which every peer of ours
retries with backoff: the throttle slows a guesser and shuts no one out for
good, and a local user cannot throttle another user's logins at all.

Every control connection is a `GuardedBroker`: before login it may send
`PRELOGIN_BYTES` holding at most `PRELOGIN_ELEMENTS` Banana elements, only the
login's own calls, and must log in within `LOGIN_TIMEOUT` seconds; after
login no single message may exceed `MESSAGE_BYTES` or `MESSAGE_ELEMENTS`
(Banana bounds each string and list, not their sum, and its decoder copies
the rest of its buffer once per element, so many tiny elements cost far more
than their bytes). A connection is dropped at its first error; refusals are
logged in one line per interval, never with a traceback.
"""

from __future__ import annotations

import collections
import hmac
from collections.abc import Callable
from typing import Any, cast

from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
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
from connscale.control.peer import peer_key

__all__ = [
    "LOGIN_TIMEOUT", "MESSAGE_BYTES", "MESSAGE_ELEMENTS", "PRELOGIN_BYTES", "PRELOGIN_ELEMENTS",
    "ControlClientFactory", "ControlServerFactory", "GuardedBroker", "HubNotAuthentic", "LoginGate",
    "LoginRefused", "LoginRoot", "LoginThrottle", "LoginThrottled", "ProofChecker", "authenticate",
]

log = Logger(namespace="connscale.control.login")

#: What a peer says first (`hello`); any other version is refused before a word more. 3: every
#: agent answers `report_packed` and takes `apply_packed` alone (the plain `report`/`apply`
#: are gone, and an agent of 2 may not offer the packed ones); 2: the SPAKE2 login.
PROTOCOL_VERSION = 3
#: Seconds a connection has to log in before it is dropped.
LOGIN_TIMEOUT = 5.0
#: Bytes a peer may send before it has logged in (a login is a few hundred).
PRELOGIN_BYTES = 4 * 1024
#: Banana elements (counted from above: bytes with the high bit set) before login.
PRELOGIN_ELEMENTS = 512
#: Bytes one PB message may take after login (a report of 4096 workers fits).
MESSAGE_BYTES = 4 * 1024 * 1024
#: Banana elements of one message after login (a registration of 4096 source addresses fits;
#: what is large travels as packed JSON text: a handful of elements).
MESSAGE_ELEMENTS = 64 * 1024
THROTTLE_FAILURES = 5
THROTTLE_WINDOW = 10.0
#: At most one log line about refused connections per this many seconds.
LOG_INTERVAL = 10.0
#: Peers the throttle remembers (oldest forgotten first).
MAX_TRACKED = 4096
#: Logins of one peer waiting for their turn (its one exchange in flight) at most.
MAX_WAITING = 256
#: The calls a connection may make before it has logged in.
LOGIN_CALLS = frozenset({b"hello", b"start", b"confirm"})
#: What PB may say before login besides those calls (its version, dropping a reference).
_PRELOGIN_COMMANDS = frozenset({b"version", b"decref", b"message"})
_LOW = bytes(range(128))


class HubNotAuthentic(cred_error.UnauthorizedLogin):
    """The hub failed to prove it knows the password: not our hub, a different secret, or a relay."""


class LoginRefused(pb.Error):
    """The hub refused a login; crosses PB as its one-line message (and, being a pb.Error,
    without a traceback in the hub's log for every attempt: the throttle logs those)."""


class LoginThrottled(LoginRefused):
    """Too many failed logins from this peer for now: retry after the time it says."""


# ---------------------------------------------------------------- throttle


class LoginThrottle:
    """Guesses per peer, and a log that speaks once per interval."""

    def __init__(self, clock: IReactorTime, failures: int = THROTTLE_FAILURES, window: float = THROTTLE_WINDOW,
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
        #: Peers with an exchange in flight, and the starts waiting for their turn.
        self._busy: set[str] = set()
        self._waiting: dict[str, collections.deque[defer.Deferred[None]]] = {}

    def blocked_for(self, peer: str) -> float:
        """Seconds this peer must wait before it may try again (0: it may)."""
        times = self._recent.get(peer)
        if not times or len(times) < self.failures:
            return 0.0
        left = times[0] + self.window - self.clock.seconds()
        return max(0.0, left)

    def _count(self, peer: str) -> None:
        times = self._recent.pop(peer, None) or collections.deque(maxlen=self.failures)
        times.append(self.clock.seconds())
        self._recent[peer] = times
        while len(self._recent) > MAX_TRACKED:
            self._recent.popitem(last=False)

    def acquire(self, peer: str) -> defer.Deferred[None]:
        """The peer's turn to make a guess: one exchange in flight per peer, the others wait
        their turn (at most MAX_WAITING; beyond, LoginThrottled). Parallel connections cannot
        get past the failure count, and a fleet logging in at once from one address queues."""
        waiting = self._waiting.setdefault(peer, collections.deque())
        if peer not in self._busy:
            self._busy.add(peer)
            return defer.succeed(None)
        if len(waiting) >= MAX_WAITING:
            return defer.fail(LoginThrottled(f"too many logins at once from {peer}; try again in 1 s"))
        turn: defer.Deferred[None] = defer.Deferred()
        waiting.append(turn)
        return turn

    def release(self, peer: str, failed: bool) -> None:
        """The peer's exchange in flight ended (`failed`: without proving the password)."""
        if failed:
            self._count(peer)
        waiting = self._waiting.get(peer)
        if waiting:
            waiting.popleft().callback(None)
            return
        self._busy.discard(peer)
        self._waiting.pop(peer, None)

    def failed(self, peer: str, reason: str) -> None:
        """A refused login whose guess (if any) was counted already."""
        self.refuse(peer, "login", reason)

    def refuse(self, peer: str, kind: str, reason: str) -> None:
        """Count a refused connection; logged with the others at the next interval."""
        self.refused[kind] += 1
        self._unlogged[peer] += 1
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


# ---------------------------------------------------------------- the guarded connection


class GuardedBroker(pb.Broker):
    """A PB broker with a login deadline and bounded input (see the module docstring)."""

    logged_in = False
    #: Refused: nothing more of it is read.
    dropped = False
    _timer: Any = None
    _peer: str | None = None

    def connectionMade(self) -> None:
        self._prelogin = 0
        self._since = 0
        self._elements = 0
        self._completed = False
        #: Fires once PB is ready to carry calls (Banana's dialect is agreed).
        self.negotiated: defer.Deferred[GuardedBroker] = defer.Deferred()
        super().connectionMade()
        factory = self.factory
        clock = getattr(factory, "clock", None)
        if not self.isClient and clock is not None:
            self._timer = clock.callLater(getattr(factory, "login_timeout", LOGIN_TIMEOUT), self._too_slow)

    @property
    def peer(self) -> str:
        """The throttle's key for this connection (looked up once)."""
        if self._peer is None:
            self._peer = peer_key(self.transport)
        return self._peer

    def connectionReady(self) -> None:
        super().connectionReady()
        if not self.negotiated.called:
            self.negotiated.callback(self)

    def login_succeeded(self) -> None:
        self.logged_in = True
        self._since = 0
        self._elements = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()

    def _too_slow(self) -> None:
        if not self.logged_in:
            self.refuse("timeout", f"not logged in within {getattr(self.factory, 'login_timeout', LOGIN_TIMEOUT):g} s")

    def refuse(self, kind: str, reason: str) -> None:
        """Drop this connection now, counted and logged (one line per interval) by the throttle."""
        if self.dropped or self.disconnected:
            return
        throttle = getattr(self.factory, "throttle", None)
        if throttle is not None:
            throttle.refuse(self.peer, kind, reason)
        else:
            log.warn("control connection closed: {reason}", reason=reason)
        self.dropped = True
        if self.transport is not None:
            # A control connection is TCP (Twisted's or the lean transport), which can abort.
            cast(ITCPTransport, self.transport).abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.dropped or self.disconnected:
            return
        size = len(data)
        # An upper bound of the elements in `data`: each starts with a byte >= 0x80.
        elements = len(data.translate(None, _LOW))
        if not self.logged_in:
            self._prelogin += size
            self._elements += elements
            limit = getattr(self.factory, "prelogin_bytes", PRELOGIN_BYTES)
            if self._prelogin > limit:
                return self.refuse("size", f"more than {limit} bytes before logging in")
            elements_limit = getattr(self.factory, "prelogin_elements", PRELOGIN_ELEMENTS)
            if self._elements > elements_limit:
                return self.refuse("size", f"more than {elements_limit} elements before logging in")
        else:
            self._since += size
            self._elements += elements
            limit = getattr(self.factory, "message_bytes", MESSAGE_BYTES)
            if self._since > limit:
                return self.refuse("size", f"a message of more than {limit} bytes")
            if self._elements > MESSAGE_ELEMENTS:
                return self.refuse("size", f"a message of more than {MESSAGE_ELEMENTS} elements")
        self._completed = False
        try:
            super().dataReceived(data)
        except Exception as e:
            # Banana's errors (a bad prefix, a type it does not know, ...) and anything a
            # malformed expression raises: one counted line, not a traceback per byte.
            return self.refuse("protocol", _one_line(e))
        if self._completed and self.logged_in:
            # Whatever follows the last complete message came in this chunk:
            # the next message has at most this many bytes and elements so far.
            self._since, self._elements = size, elements

    def expressionReceived(self, obj: Any) -> None:
        if self.dropped or self.disconnected:
            return
        self._completed = True
        if not self.logged_in and not self.isClient and not _login_expression(obj):
            return self.refuse("protocol", "a call other than the login's before logging in")
        super().expressionReceived(obj)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        negotiated = getattr(self, "negotiated", None)
        # (Only a peer waits for it; on the hub an unanswered errback is a traceback in its log.)
        if negotiated is not None and not negotiated.called and self.isClient:
            negotiated.errback(pb.PBConnectionLost("the connection closed before PB was ready"))
        super().connectionLost(reason)


def _login_expression(obj: Any) -> bool:
    """Is this what a peer says before login: PB's version, a decref, or a login call?"""
    if not isinstance(obj, list) or not obj or obj[0] not in _PRELOGIN_COMMANDS:
        return False
    if obj[0] != b"message":
        return True
    # [b"message", requestID, objectID, method, answerRequired, args, kwargs]
    return len(obj) == 7 and obj[3] in LOGIN_CALLS


def _one_line(e: BaseException) -> str:
    text = (str(e).strip() or type(e).__name__).splitlines()[0]
    return f"{type(e).__name__}: {text[:120]}"


class ControlServerFactory(pb.PBServerFactory):
    """The hub's control port: a `LoginGate` per connection, every broker guarded."""

    protocol = GuardedBroker

    def __init__(self, root: Any, clock: IReactorTime, throttle: LoginThrottle | None = None,
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
    # The hub's answers before login: a refusal is a copied failure of a few hundred elements.
    prelogin_bytes = 64 * 1024
    prelogin_elements = 16 * 1024
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
            elif failure.check(LoginThrottled):
                gate.refuse(failure.getErrorMessage(), "throttled")  # no turn: too many waiting
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
