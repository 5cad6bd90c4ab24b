"""TLS on both ends: a layer between any byte transport and any protocol.

Why the standard library's `ssl` (SSLObject over two MemoryBIOs) on connscale's own
transports, rather than Twisted's `TLSMemoryBIOFactory` over its stock TCP: per held
connection OpenSSL's state dominates either way (17 KB server end, 35 KB client end with
OpenSSL 3.0), but the stock path adds 16-20 KB per end (pyOpenSSL's cffi wrappers, a
`Provides` declaration per connection), 20-50 % more CPU per handshake and three times the
CPU per round trip (every call through cffi, a `callLater(0)` per write); `ssl` is C all the
way, and its module maps ~4 MB into a worker where pyOpenSSL and cryptography take ~13 MB.
Measured with bench/tls_cost.py; the figures are in docs/design.md. A layer rather than a socket
BIO: the same code runs over the lean transports (net/transport.py) and over
Twisted's (a server given by name, a reactor without epoll), and it reads each record
with one read(2) where OpenSSL on the socket would do two (header, then body).

`ClientTLS.wrap(conn, server_name, route)` is the one hook on the dial path (see
`net.dial.Dialer.secure`): the transport talks to the returned layer, the layer
talks to `conn`, and `conn` meets its transport (`makeConnection`) only once the
handshake is done, so the pool counts a connection open when it can carry a ping.
`ServerTLSFactory` wraps any server factory the same way (line, raw, websocket ...).

What the layer records: the handshake's time from TCP connected to finished, into the
pool's `Counters.handshake` buckets (a histogram per second, as RTTs), whether a
resumed session was offered and taken (`Counters.resumed`), and a failed handshake by
its cause from the bounded set `metrics.counters.TLS_CAUSES`, in phase `connect` on
both sides. A connection a route opens again resumes a session an earlier connection
of that route left (`client.tls.resume`): each saved session is offered once.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Hashable
from typing import Any

from twisted.internet import error as terror
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from connscale.config.tls import HANDSHAKE_TIMEOUT, ClientTLSSettings, ServerTLSSettings, TLSSetupError
from connscale.metrics.buckets import MAX_US
from connscale.metrics.counters import Counters, NamedFailure, classify
from connscale.net.transport import reset

log = Logger(namespace="connscale.tls")

#: Plain bytes asked of one SSLObject.read(); a ping's reply is a few bytes.
READ_SIZE = 16384
#: Sessions kept for resumption, in all routes together (each holds ~1-2 KB, the server's
#: certificate included): enough for every connection a worker replaces at a time, short of a
#: mass reconnect, whose connections beyond it make full handshakes.
SESSIONS_MAX = 4096


# ---------------------------------------------------------------- failure causes

#: X509_V_ERR_* codes (openssl/x509_vfy.h) by the cause they mean.
_VERIFY_CAUSES = {
    2: "tls_unknown_ca",     # UNABLE_TO_GET_ISSUER_CERT
    9: "tls_cert_not_yet_valid",
    10: "tls_cert_expired",
    18: "tls_unknown_ca",    # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "tls_unknown_ca",    # SELF_SIGNED_CERT_IN_CHAIN
    20: "tls_unknown_ca",    # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "tls_unknown_ca",    # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    62: "tls_hostname_mismatch",
    63: "tls_hostname_mismatch",  # EMAIL_MISMATCH
    64: "tls_hostname_mismatch",  # IP_ADDRESS_MISMATCH
}

#: OpenSSL reason codes (SSLError.reason) by cause; anything else is `tls_error`.
_REASON_CAUSES = {
    # Bytes that are not a TLS record: a plain-text peer.
    "WRONG_VERSION_NUMBER": "tls_peer_not_tls",
    "HTTP_REQUEST": "tls_peer_not_tls",
    "HTTPS_PROXY_REQUEST": "tls_peer_not_tls",
    "PACKET_LENGTH_TOO_LONG": "tls_peer_not_tls",
    "RECORD_LENGTH_MISMATCH": "tls_peer_not_tls",
    "UNKNOWN_PROTOCOL": "tls_peer_not_tls",
    "RECORD_LAYER_FAILURE": "tls_peer_not_tls",
    "LENGTH_TOO_SHORT": "tls_peer_not_tls",
    "WRONG_SSL_VERSION": "tls_protocol_version",
    "UNSUPPORTED_PROTOCOL": "tls_protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "tls_protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "tls_protocol_version",
    "TLSV1_ALERT_INAPPROPRIATE_FALLBACK": "tls_protocol_version",
    "VERSION_TOO_LOW": "tls_protocol_version",
    "VERSION_TOO_HIGH": "tls_protocol_version",
    # The peer's alert about our certificate (or the lack of one).
    "TLSV1_ALERT_UNKNOWN_CA": "tls_cert_rejected",
    "SSLV3_ALERT_BAD_CERTIFICATE": "tls_cert_rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "tls_cert_rejected",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "tls_cert_rejected",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "tls_cert_rejected",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "tls_cert_rejected",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "tls_cert_rejected",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "tls_cert_rejected",
    "TLSV1_ALERT_ACCESS_DENIED": "tls_cert_rejected",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "tls_handshake_failure",
    "NO_SHARED_CIPHER": "tls_handshake_failure",
    "NO_SHARED_GROUPS": "tls_handshake_failure",
    "NO_SUITABLE_KEY_SHARE": "tls_handshake_failure",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "tls_handshake_failure",
    "NO_CIPHERS_AVAILABLE": "tls_handshake_failure",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": "tls_handshake_failure",
    "CERTIFICATE_VERIFY_FAILED": "tls_cert_invalid",
    "UNEXPECTED_EOF_WHILE_READING": "tls_closed_in_handshake",
}


def tls_cause(exc: BaseException) -> str:
    """The bounded cause of a TLS error (never its message: it names hosts and certificates)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CAUSES.get(getattr(exc, "verify_code", 0) or 0, "tls_cert_invalid")
    if isinstance(exc, ssl.SSLEOFError):
        return "tls_closed_in_handshake"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str):
        return _REASON_CAUSES.get(reason, "tls_error")
    return "tls_error"


# ---------------------------------------------------------------- contexts

def client_context(settings: ClientTLSSettings) -> ssl.SSLContext:
    """The SSLContext of `client.tls` (one per pool: sessions resume only within it)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if settings.verify:
            if settings.ca_file is not None:
                ctx.load_verify_locations(cafile=settings.ca_file)
            else:
                ctx.load_default_certs()
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if settings.cert is not None:
            ctx.load_cert_chain(settings.cert, settings.key)
    except (ssl.SSLError, OSError) as e:
        raise TLSSetupError(f"client.tls: {_why(e)}") from None
    return ctx


def server_context(settings: ServerTLSSettings) -> ssl.SSLContext:
    """The SSLContext of `server.tls` (every worker loads the same certificate)."""
    if settings.cert is None:
        raise TLSSetupError("server.tls: no certificate (auto is made into one before workers start)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(settings.cert, settings.key)
    except (ssl.SSLError, OSError) as e:
        raise TLSSetupError(f"server.tls: {_why(e)}") from None
    # One ticket is enough to resume once; every ticket a client takes costs it memory.
    ctx.num_tickets = 1
    return ctx


def _why(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    return getattr(e, "strerror", None) or " ".join(str(e).split())[:120]


# ---------------------------------------------------------------- the layer

class TLSLayer:
    """TLS between a byte transport (below) and `wrappedProtocol` (above).

    To the transport it is the protocol (`makeConnection`, `dataReceived`,
    `connectionLost`); to the protocol it is the transport (`write`,
    `loseConnection`, `abortConnection`, ...), once the handshake is done.
    """

    __slots__ = ("deadline", "failure", "inc", "obj", "out", "owner", "route", "started", "transport",
                 "wrappedProtocol")

    def __init__(self, owner: Any, protocol: Any, obj: ssl.SSLObject, inc: ssl.MemoryBIO, out: ssl.MemoryBIO,
                 route: Hashable = None) -> None:
        self.owner = owner
        self.wrappedProtocol = protocol
        self.obj: ssl.SSLObject | None = obj
        self.inc = inc
        self.out = out
        self.route = route
        self.transport: Any = None
        #: When TCP was connected; 0.0 once the handshake is done.
        self.started = 0.0
        self.deadline: Any = None  # an IDelayedCall while the handshake runs
        #: Why this connection is ending, when it is TLS's doing (given to whoever is told).
        self.failure: NamedFailure | None = None

    # -- what the transport below calls ---------------------------------------------------
    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        owner = self.owner
        self.started = owner.clock.seconds() or 1e-9
        self.deadline = owner.clock.callLater(owner.handshake_timeout, self._timed_out)
        self._handshake()

    def dataReceived(self, data: bytes) -> None:
        if self.obj is None:
            return
        self.inc.write(data)
        if self.started and not self._handshake():
            return
        self._read()

    def connectionLost(self, reason: Failure) -> None:
        obj = self.obj
        self.obj = None
        self._cancel_deadline()
        if self.started:
            # Lost before the handshake finished: the connect failed.
            self.started = 0.0
            failure = self.failure
            if failure is None:
                lost = reason.value
                # A clean close is the peer giving up on the handshake; a reset keeps its errno.
                clean = isinstance(lost, terror.ConnectionDone) or not isinstance(lost, terror.ConnectionLost)
                failure = NamedFailure("tls_closed_in_handshake") if clean else None
            self.owner.handshake_failed(self, Failure(failure) if failure is not None else reason)
            return
        if obj is not None:
            self.owner.closed(self, obj)
        if self.failure is not None:
            reason = Failure(self.failure)
        self.wrappedProtocol.connectionLost(reason)

    # -- what the protocol above calls ---------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.obj is not None and not self.started

    @property
    def disconnecting(self) -> bool:
        return bool(self.transport is not None and self.transport.disconnecting)

    def write(self, data: bytes) -> None:
        obj = self.obj
        if obj is None or self.started:
            return  # as a transport: nothing is sent once closing (or before it is connected)
        try:
            obj.write(data)
        except ssl.SSLError as e:
            self._fail(e)
            return
        self.transport.write(self.out.read())

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        """close_notify, then the transport's own orderly close."""
        obj = self.obj
        transport = self.transport
        if transport is None:
            return
        if obj is not None and not self.started:
            try:
                obj.unwrap()
            except ssl.SSLError:
                pass  # the peer's close_notify is not awaited
            if self.out.pending:
                transport.write(self.out.read())
        transport.loseConnection()

    def abortConnection(self) -> None:
        if self.transport is not None:
            reset(self.transport)

    def stopConnecting(self) -> None:
        """The pool gives up on this connection before it opened: TCP or handshake."""
        transport = self.transport
        if transport is None:
            return
        if getattr(transport, "connecting", False) or not hasattr(transport, "abortConnection"):
            transport.stopConnecting()
        else:
            reset(transport)  # reported as a failed connect, which the pool knows it stopped

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.transport.setTcpNoDelay(enabled)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.transport.setTcpKeepAlive(enabled)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    # -- internals ------------------------------------------------------------------------
    def over(self, transport: Any) -> TLSLayer:
        """Remember the transport dialling for us (before it connects); returns self."""
        self.transport = transport
        return self

    def _handshake(self) -> bool:
        """Go on with the handshake; True once it is done (and the protocol connected)."""
        obj = self.obj
        assert obj is not None
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as e:
            self._flush()  # our alert, if OpenSSL wrote one, tells the peer why
            self._fail(e)
            return False
        self._flush()
        seconds = self.owner.clock.seconds() - self.started
        self.started = 0.0
        self._cancel_deadline()
        self.owner.handshake_done(self, obj, seconds)
        self.wrappedProtocol.makeConnection(self)
        return self.obj is not None

    def _read(self) -> None:
        obj = self.obj
        inc = self.inc
        protocol = self.wrappedProtocol
        while obj is not None:
            try:
                data = obj.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                # close_notify: the peer ends the connection cleanly; so do we.
                self.transport.loseConnection()
                return
            except ssl.SSLError as e:
                self._fail(e)
                return
            if not data:
                break
            protocol.dataReceived(data)
            if not inc.pending and not obj.pending():
                break  # all read: no SSLWantReadError raised for nothing
            obj = self.obj
        if self.out.pending:
            self._flush()  # post-handshake messages (key updates) answered

    def _flush(self) -> None:
        out = self.out
        if out.pending and self.transport is not None:
            self.transport.write(out.read())

    def _fail(self, e: BaseException) -> None:
        """A TLS error: end the connection; whoever is told learns the cause."""
        if self.failure is None:
            self.failure = NamedFailure(tls_cause(e))
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self.deadline = None
        if self.started and self.transport is not None:
            self.failure = NamedFailure("tls_handshake_timeout")
            reset(self.transport)

    def _cancel_deadline(self) -> None:
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()


# ---------------------------------------------------------------- the two sides

class _Side:
    """What a layer reports to, on either side: the context, the clock and the counters."""

    def __init__(self, context: ssl.SSLContext, clock: IReactorTime, counters: Counters,
                 handshake_timeout: float) -> None:
        self.context = context
        self.clock = clock
        self.counters = counters
        self.handshake_timeout = handshake_timeout

    def handshake_done(self, layer: TLSLayer, obj: ssl.SSLObject, seconds: float) -> None:
        c = self.counters
        us = int(seconds * 1e6)
        c.handshake.record(1 if us < 1 else MAX_US if us > MAX_US else us)
        if obj.session_reused:
            c.resumed += 1

    def handshake_failed(self, layer: TLSLayer, reason: Failure) -> None:
        """Counted by cause in phase connect (the client side tells its pool instead)."""
        self.counters.fail("connect", classify(reason))

    def closed(self, layer: TLSLayer, obj: ssl.SSLObject) -> None:
        """An open connection ended."""


class ClientTLS(_Side):
    """A pool's TLS: one context, the handshake's figures, sessions saved per route."""

    def __init__(self, settings: ClientTLSSettings, clock: IReactorTime, counters: Counters,
                 factory: Any = None) -> None:
        super().__init__(client_context(settings), clock, counters, settings.handshake_timeout)
        self.settings = settings
        #: Told of a connect that failed in the handshake, as of one that failed in TCP.
        self.factory = factory
        self.sessions: dict[Hashable, list[ssl.SSLSession]] = {}
        self._saved = 0

    def wrap(self, conn: Any, server_name: str, route: Hashable = None) -> TLSLayer:
        """TLS around `conn`: the transport dialled for it talks to the returned layer.

        `server_name` is sent as SNI (not for an IP address) and checked against the
        certificate; `route` keys the sessions a reconnect resumes."""
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        session = self._take_session(route) if self.settings.resume else None
        obj = self.context.wrap_bio(inc, out, server_side=False, server_hostname=server_name, session=session)
        return TLSLayer(self, conn, obj, inc, out, route)

    def handshake_failed(self, layer: TLSLayer, reason: Failure) -> None:
        if self.factory is not None:
            # The layer, which knows its connection and its transport: Twisted's own TCP
            # transport has dropped its protocol by the time its connection is lost.
            self.factory.clientConnectionFailed(layer, reason)
        else:
            super().handshake_failed(layer, reason)

    def closed(self, layer: TLSLayer, obj: ssl.SSLObject) -> None:
        """Keep the session of a connection that ended for the next connection of its route."""
        if not self.settings.resume or self._saved >= SESSIONS_MAX:
            return
        session = obj.session
        if session is None or not (session.has_ticket or session.id):
            return  # TLS 1.3 before its ticket arrived: nothing to resume
        self.sessions.setdefault(layer.route, []).append(session)
        self._saved += 1

    def _take_session(self, route: Hashable) -> ssl.SSLSession | None:
        saved = self.sessions.get(route)
        now = time.time()
        while saved:
            session = saved.pop()
            self._saved -= 1
            if session.time + session.timeout > now:
                return session
        return None


class ServerTLS(_Side):
    """A server worker's TLS: one context; failed handshakes counted by cause."""

    def __init__(self, settings: ServerTLSSettings, clock: IReactorTime, counters: Counters) -> None:
        super().__init__(server_context(settings), clock, counters, HANDSHAKE_TIMEOUT)

    def wrap(self, protocol: Any) -> TLSLayer:
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        return TLSLayer(self, protocol, self.context.wrap_bio(inc, out, server_side=True), inc, out)


class ServerTLSFactory(ServerFactory):  # ServerFactory adds nothing to Factory but the type adoptStreamPort asks for
    """Any server factory, over TLS: its protocols meet the connection once the handshake is done."""

    noisy = False

    def __init__(self, tls: ServerTLS, factory: Any) -> None:
        self.tls = tls
        self.factory = factory

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: Any) -> Any:
        protocol = self.factory.buildProtocol(addr)
        return None if protocol is None else self.tls.wrap(protocol)
