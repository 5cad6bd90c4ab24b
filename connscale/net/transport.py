"""TCP transports for connscale's own sockets: an fd and a few slots.

This module is the established connection (`Connection`, and `ServerTransport`,
an accepted one); `net.connector.ClientTransport` is one that connects first,
`net.port.ListeningPort` the accept loop that makes `ServerTransport`s.

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

import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from connscale.net.dispatch import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Loop

log = Logger(namespace="connscale.transport")

#: Bytes asked of one read(2). A ping or pong is 5; more only arrives from a
#: misbehaving peer, whose data the protocol caps anyway.
READ_SIZE = 4096

_READABLE = EPOLLIN | EPOLLERR | EPOLLHUP
LINGER_RST = struct.pack("ii", 1, 0)
_read = os.read
_write = os.write


def lost_with(err: OSError) -> error.ConnectionLost:
    """A read or write error as Twisted names it, keeping the errno for `classify`."""
    exc = error.ConnectionLost(os.strerror(err.errno or 0))
    exc.errno = err.errno  # type: ignore[attr-defined]
    return exc


def tcp_address(family: int, addr: Any) -> IPv4Address | IPv6Address:
    if family == socket.AF_INET6:
        return IPv6Address("TCP", addr[0], addr[1])
    return IPv4Address("TCP", addr[0], addr[1])


def socket_call(fd: int, fn: Callable[[socket.socket], Any], family: int | None = None) -> Any:
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
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)


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
                self._lost(lost_with(e))
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
            self.loop.soon(self._lost, lost_with(e))
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
            socket_call(fd, _linger_zero, socket.AF_INET)
        except OSError:
            pass
        self.loop.soon(self._lost, error.ConnectionAborted())

    def getPeer(self) -> IPv4Address | IPv6Address:
        return socket_call(self.fd, lambda s: tcp_address(s.family, s.getpeername()))

    def getHost(self) -> IPv4Address | IPv6Address:
        return socket_call(self.fd, lambda s: tcp_address(s.family, s.getsockname()))

    def setTcpNoDelay(self, enabled: bool) -> None:
        socket_call(self.fd, lambda s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled))

    def getTcpNoDelay(self) -> bool:
        return bool(socket_call(self.fd, lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))

    def setTcpKeepAlive(self, enabled: bool) -> None:
        socket_call(self.fd, lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled))

    def getTcpKeepAlive(self) -> bool:
        return bool(socket_call(self.fd, lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)))

    def loseWriteConnection(self) -> None:
        socket_call(self.fd, lambda s: s.shutdown(socket.SHUT_WR))

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
                self._lost(lost_with(e))
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
            socket_call(self.fd, _shutdown, socket.AF_INET)
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


def reset(transport: Any) -> None:
    """Close with a reset (SO_LINGER 0): no TIME_WAIT on either side."""
    if not isinstance(transport, Connection):
        # Twisted's own TCP transport closes without shutdown() when aborted,
        # which with a zero linger is a reset.
        handle = getattr(transport, "getHandle", None)
        if handle is not None:
            try:
                handle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            except (OSError, AttributeError):
                pass  # (Twisted's TLS protocol hands out its OpenSSL connection, not a socket)
    transport.abortConnection()
