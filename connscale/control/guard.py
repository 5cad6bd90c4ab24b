"""The guarded control connection: every control connection, both ends, is a `GuardedBroker`.

Before login it may send `PRELOGIN_BYTES` holding at most `PRELOGIN_ELEMENTS`
Banana elements, only the login's own calls, and must log in within
`LOGIN_TIMEOUT` seconds; after login no single message may exceed
`MESSAGE_BYTES` or `MESSAGE_ELEMENTS` (Banana bounds each string and list, not
their sum, and its decoder copies the rest of its buffer once per element, so
many tiny elements cost far more than their bytes). A connection is dropped at
its first error; refusals are counted by the throttle (`throttle.LoginThrottle`)
and logged in one line per interval, never with a traceback.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from connscale.control.peer import peer_key
from connscale.control.throttle import LoginThrottle

log = Logger(namespace="connscale.control.login")

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
#: The calls a connection may make before it has logged in.
LOGIN_CALLS = frozenset({b"hello", b"start", b"confirm"})
#: What PB may say before login besides those calls (its version, dropping a reference).
_PRELOGIN_COMMANDS = frozenset({b"version", b"decref", b"message"})
_LOW = bytes(range(128))


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
