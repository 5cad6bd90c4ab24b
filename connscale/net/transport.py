"""TCP transports for connscale's own sockets: an fd and a few slots.

Twisted's `tcp.Server`/`tcp.Client` are general: per connection they keep a
socket object, a bound `fileno`, log and repr strings, producer state and a
dict of about 25 attributes (~900 bytes), and every read passes through
`_doReadOrWrite`, `doRead` and `_dataReceived`; every write is buffered and
asks epoll for a writable event (two `epoll_ctl` calls and an extra wake-up
per message). A ping or a pong is five bytes on an idle socket. These
transports keep the fd and five to eight slots, read straight into the
protocol, and write straight to the socket; only a rest that the socket did not
take is queued until epoll says it is writable (bench/README.md has the
figures). They implement what connscale's protocols and a Twisted protocol
need of a transport: `write`, `writeSequence`, `loseConnection`,
`abortConnection`, `getPeer`, `getHost`, `disconnecting`, `connected`.

Semantics kept from Twisted: callbacks never re-enter the caller
(`loseConnection`, a failed write and a failed connect report
`connectionLost`/`clientConnectionFailed` after the current event, see
`dispatch.Loop.soon`); `loseConnection` flushes what is queued first and stops
reading; writes after it are dropped; `abortConnection` discards what is
queued and resets the connection (SO_LINGER 0: no TIME_WAIT left behind).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import attrs

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConnector, IListeningPort, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from connscale.compat.sockets import raw_accept
from connscale.net.dispatch import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Loop

log = Logger(namespace="connscale.transport")

# Linux: bind() picks no port, connect() does; so a source IP's ephemeral range
# is shared per destination instead of exhausted by the first 28k binds.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

#: Bytes asked of one read(2). A ping or pong is 5; more only arrives from a
#: misbehaving peer, whose data the protocol caps anyway.
READ_SIZE = 4096

#: Connections accepted per readable event of a listening socket; the rest
#: wait for the next turn, so a ramp cannot starve the pings of a worker.
ACCEPT_BATCH = 64

_READABLE = EPOLLIN | EPOLLERR | EPOLLHUP
_LINGER_RST = struct.pack("ii", 1, 0)
_read = os.read
_write = os.write


def _lost_with(err: OSError) -> error.ConnectionLost:
    """A read or write error as Twisted names it, keeping the errno for `classify`."""
    exc = error.ConnectionLost(os.strerror(err.errno or 0))
    exc.errno = err.errno  # type: ignore[attr-defined]
    return exc


def _address(family: int, addr: Any) -> IPv4Address | IPv6Address:
    if family == socket.AF_INET6:
        return IPv6Address("TCP", addr[0], addr[1])
    return IPv4Address("TCP", addr[0], addr[1])


def _socket_call(fd: int, fn: Callable[[socket.socket], Any], family: int | None = None) -> Any:
    """Run `fn` on a temporary socket object for `fd`, which stays open.

    With `family` given the kernel is not asked for it (two syscalls fewer):
    for calls whose result does not depend on it.
    """
    if family is None:
        s = socket.socket(fileno=fd)
    else:
        s = socket.socket(family, socket.SOCK_STREAM, 0, fileno=fd)
    try:
        return fn(s)
    finally:
        s.detach()


def _linger_zero(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


def _shutdown(s: socket.socket) -> None:
    s.shutdown(socket.SHUT_RDWR)


@implementer(ITCPTransport)
class Connection:
    """An established connection; `fd` is -1 once it is closed."""

    __slots__ = ("disconnecting", "fd", "loop", "protocol", "wbuf")

    def __init__(self, loop: Loop, protocol: Any, fd: int = -1) -> None:
        self.fd = fd
        self.loop = loop
        self.protocol = protocol
        self.wbuf = b""
        self.disconnecting = False

    # -- what a protocol reads --------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.fd >= 0 and not self.disconnecting

    @property
    def disconnected(self) -> bool:
        return self.fd < 0

    # -- events (called by dispatch.Loop) ------------------------------------------
    def on_event(self, events: int) -> None:
        if events & _READABLE:
            try:
                data = _read(self.fd, READ_SIZE)
            except BlockingIOError:
                data = None  # a stale event for a reused fd
            except OSError as e:
                self._lost(_lost_with(e))
                return
            if data:
                self.protocol.dataReceived(data)
            elif data is not None:
                self._lost(error.ConnectionDone("Connection done"))
                return
        if events & EPOLLOUT and self.fd >= 0:
            self._flush()

    def fail(self, failure: Failure) -> None:
        """The protocol raised while handling an event: log it, end this connection."""
        log.failure("connection closed after an error in its protocol", failure)
        self._lost_failure(failure)

    # -- ITransport ----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.disconnecting or self.fd < 0:
            return  # as Twisted: nothing is sent after loseConnection
        if type(data) is not bytes:
            if not isinstance(data, bytes):
                raise TypeError(f"data must be bytes, not {type(data).__name__}")
            data = bytes(data)
        if self.wbuf:
            self.wbuf += data
            return
        try:
            sent = _write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            # The peer is gone; say so after the caller's turn, not inside it.
            self.disconnecting = True
            self.loop.forget(self.fd)
            self.loop.soon(self._lost, _lost_with(e))
            return
        if sent < len(data):
            self.wbuf = data[sent:]
            self.loop.modify(self.fd, EPOLLIN | EPOLLOUT)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def loseConnection(self) -> None:
        """Close once what is queued has been written; read nothing more."""
        if self.fd < 0 or self.disconnecting:
            return
        self.disconnecting = True
        if self.wbuf:
            self.loop.modify(self.fd, EPOLLOUT)
        else:
            self.loop.forget(self.fd)
            self.loop.soon(self._finish)

    def abortConnection(self) -> None:
        """Close at once with a reset, dropping anything queued."""
        fd = self.fd
        if fd < 0:
            return
        self.wbuf = b""
        self.disconnecting = True
        self.loop.forget(fd)
        try:
            _socket_call(fd, _linger_zero, socket.AF_INET)
        except OSError:
            pass
        self.loop.soon(self._lost, error.ConnectionAborted())

    def getPeer(self) -> IPv4Address | IPv6Address:
        return _socket_call(self.fd, lambda s: _address(s.family, s.getpeername()))

    def getHost(self) -> IPv4Address | IPv6Address:
        return _socket_call(self.fd, lambda s: _address(s.family, s.getsockname()))

    def setTcpNoDelay(self, enabled: bool) -> None:
        _socket_call(self.fd, lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled))

    def getTcpNoDelay(self) -> bool:
        return bool(_socket_call(self.fd, lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        _socket_call(self.fd, lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled))

    def getTcpKeepAlive(self) -> bool:
        return bool(_socket_call(self.fd, lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)))

    def loseWriteConnection(self) -> None:
        _socket_call(self.fd, lambda s: s.shutdown(socket.SHUT_WR))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        raise NotImplementedError("connscale transports do not support producers")

    def unregisterProducer(self) -> None:
        pass

    # -- internals ----------------------------------------------------------------------
    def _flush(self) -> None:
        data = self.wbuf
        if data:
            try:
                sent = _write(self.fd, data)
            except BlockingIOError:
                return
            except OSError as e:
                self._lost(_lost_with(e))
                return
            self.wbuf = data = data[sent:]
            if data:
                return
        if self.disconnecting:
            self._finish()
        else:
            self.loop.modify(self.fd, EPOLLIN)

    def _finish(self) -> None:
        """The end of `loseConnection`: everything was written.

        shutdown() first, as Twisted does: the peer gets a FIN, and reads its
        end of the stream, even if a reply of theirs arrived unread here
        (close() alone would then send a reset).
        """
        if self.fd < 0:
            return
        try:
            _socket_call(self.fd, _shutdown, socket.AF_INET)
        except OSError:
            pass
        self._lost(error.ConnectionDone("Connection done"))

    def _close_fd(self) -> bool:
        fd = self.fd
        if fd < 0:
            return False
        self.fd = -1
        self.loop.forget(fd)
        try:
            os.close(fd)  # also takes it out of epoll: we never dup our fds
        except OSError:
            pass
        return True

    def _lost(self, reason: BaseException) -> None:
        if self._close_fd():
            self.protocol.connectionLost(Failure(reason))

    def _lost_failure(self, failure: Failure) -> None:
        if self._close_fd():
            self.protocol.connectionLost(failure)


class ServerTransport(Connection):
    """An accepted connection."""

    __slots__ = ()


@attrs.frozen
class DialTarget:
    """Where a `ClientTransport` connects, and how: one per route, shared by
    every connection of that route (a transport holds a reference, not a copy)."""

    host: str
    port: int
    src: str | None = None
    #: SO_LINGER 0 from the start, so that every close of the socket is a reset,
    #: also the kernel's when the process ends with it still open (a worker
    #: stopped before it drained): no TIME_WAIT is left.
    reset_on_close: bool = False
    address: IPv4Address | IPv6Address = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        address = IPv6Address("TCP", self.host, self.port) if ":" in self.host else IPv4Address(
            "TCP", self.host, self.port)
        object.__setattr__(self, "address", address)


@implementer(ITCPTransport, IConnector)
class ClientTransport(Connection):
    """A connection we open: non-blocking connect, then as `Connection`.

    The source IP is bound with IP_BIND_ADDRESS_NO_PORT, so the port is chosen
    by connect() per destination: one source IP serves ~28k connections per
    server port instead of 28k in all. It is its own `IConnector` (as Twisted's
    `Connector` is for `tcp.Client`): a failure to connect is reported to
    `factory.clientConnectionFailed(self, failure)` (a `ClientFactory`), and
    the protocol meets the connection through `makeConnection` once it is up.
    """

    __slots__ = ("connecting", "factory", "target")

    def __init__(self, loop: Loop, protocol: Any, factory: Any) -> None:
        super().__init__(loop, protocol)
        self.factory = factory
        self.target: DialTarget | None = None
        self.connecting = False

    @property
    def connected(self) -> bool:
        return self.fd >= 0 and not (self.disconnecting or self.connecting)

    def dial(self, target: DialTarget) -> None:
        """Connect to `target`; the outcome arrives as an event."""
        self.target = target
        self.connect()

    # -- IConnector ---------------------------------------------------------------
    def connect(self) -> None:
        """Start connecting to the target (again, once a previous attempt ended)."""
        target = self.target
        if target is None or self.fd >= 0:
            raise RuntimeError("connect() needs a target and no open socket")
        self.disconnecting = False
        host, port, src = target.host, target.port, target.src
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self._connect_failed(e.errno or 0)
            return
        try:
            if target.reset_on_close:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            if src:
                if family == socket.AF_INET:
                    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((src, 0))
            err = s.connect_ex((host, port))
        except OSError as e:
            s.close()
            self._connect_failed(e.errno or 0)
            return
        if err and err != errno.EINPROGRESS:
            s.close()
            self._connect_failed(err)
            return
        self.fd = s.detach()
        self.connecting = True
        self.loop.add(self.fd, self, EPOLLOUT)

    def disconnect(self) -> None:
        """Stop connecting, or close the connection once what is queued is written."""
        if self.connecting:
            self.stopConnecting()
        else:
            self.loseConnection()

    def getDestination(self) -> IPv4Address | IPv6Address:
        if self.target is None:
            raise RuntimeError("no target dialled yet")
        return self.target.address

    def stopConnecting(self) -> None:
        if self.connecting:
            self._close_fd()
            self.connecting = False
            self.loop.soon(self.factory.clientConnectionFailed, self, Failure(error.UserError()))

    def on_event(self, events: int) -> None:
        if self.connecting:
            self._connect_done(events)
            return
        # Connection.on_event, inlined: this is the hot path of every pong.
        if events & _READABLE:
            try:
                data = _read(self.fd, READ_SIZE)
            except BlockingIOError:
                data = None
            except OSError as e:
                self._lost(_lost_with(e))
                return
            if data:
                self.protocol.dataReceived(data)
            elif data is not None:
                self._lost(error.ConnectionDone("Connection done"))
                return
        if events & EPOLLOUT and self.fd >= 0:
            self._flush()

    def _connect_done(self, events: int) -> None:
        if events & (EPOLLERR | EPOLLHUP):
            try:
                err = _socket_call(self.fd, lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            except OSError as e:
                err = e.errno or 0
            self._close_fd()
            self.connecting = False
            self._connect_failed(err or errno.ECONNREFUSED)
            return
        if not events & EPOLLOUT:
            return
        self.connecting = False
        self.loop.modify(self.fd, EPOLLIN)
        self.protocol.makeConnection(self)

    def _connect_failed(self, err: int) -> None:
        exc = error.ConnectError(osError=err, string=os.strerror(err))
        self.loop.soon(self.factory.clientConnectionFailed, self, Failure(exc))

    def fail(self, failure: Failure) -> None:
        if self.connecting:
            self._close_fd()
            self.connecting = False
            self.loop.soon(self.factory.clientConnectionFailed, self, failure)
            return
        super().fail(failure)


@implementer(IListeningPort)
class ListeningPort:
    """A listening socket whose connections get a `ServerTransport` each.

    At the fd limit accept(2) fails with EMFILE while the connection stays
    queued; with level-triggered epoll that is a busy loop. A reserved fd is
    closed for a moment so the connection can be accepted and closed at once
    (the client sees it end instead of hanging), and counted by `fail` as
    ("connect", "EMFILE"), like every other accept error: one count each, no
    log line per connection (at 100k connections that would flood the log).
    """

    def __init__(
        self,
        loop: Loop,
        sock: socket.socket,
        factory: Any,
        fail: Callable[[str, str], None] | None = None,
    ) -> None:
        self.loop = loop
        self.socket = sock
        self.fd = sock.fileno()
        self.factory = factory
        self.count_failure = fail or (lambda phase, cause: None)
        self._accept_one = raw_accept(sock)
        self._reserve = self._open_reserve()
        self.listening = False

    @staticmethod
    def _open_reserve() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def startListening(self) -> None:
        if not self.listening:
            self.listening = True
            self.factory.doStart()
            self.loop.add(self.fd, self, EPOLLIN)

    def stopListening(self) -> defer.Deferred[None]:
        if self.listening:
            self.listening = False
            self.loop.forget(self.fd)
            self.socket.close()
            if self._reserve >= 0:
                os.close(self._reserve)
                self._reserve = -1
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> IPv4Address | IPv6Address:
        return _address(self.socket.family, self.socket.getsockname())

    def on_event(self, events: int) -> None:
        accept, factory, loop = self._accept_one, self.factory, self.loop
        family = self.socket.family
        for _ in range(ACCEPT_BATCH):
            try:
                fd, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if not self._accept_error(e):
                    return
                continue
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
            protocol = factory.buildProtocol(_address(family, addr))
            if protocol is None:
                os.close(fd)
                continue
            transport = ServerTransport(loop, protocol, fd)
            loop.add(fd, transport, EPOLLIN)
            protocol.makeConnection(transport)

    def fail(self, failure: Failure) -> None:
        """A factory or protocol raised while accepting: log it, keep listening."""
        log.failure("accepting a connection failed", failure)

    def _accept_error(self, e: OSError) -> bool:
        """Count it; True when accepting may go on in this turn."""
        code = e.errno or 0
        if code in (errno.EMFILE, errno.ENFILE) and self._reserve >= 0:
            os.close(self._reserve)
            try:
                fd, _ = self._accept_one()
                os.close(fd)
            except OSError:
                pass
            self._reserve = self._open_reserve()
            self.count_failure("connect", "EMFILE" if code == errno.EMFILE else "ENFILE")
            return True
        self.count_failure("connect", errno.errorcode.get(code, f"ERRNO_{code}"))
        # Aborted handshakes are the peer's; anything else ends this turn.
        return code in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)


def reset(transport: Any) -> None:
    """Close with a reset (SO_LINGER 0): no TIME_WAIT on either side."""
    if not isinstance(transport, Connection):
        # Twisted's own TCP transport closes without shutdown() when aborted,
        # which with a zero linger is a reset.
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            try:
                handle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except (OSError, AttributeError):
                pass  # (Twisted's TLS protocol hands out its OpenSSL connection, not a socket)
    transport.abortConnection()
