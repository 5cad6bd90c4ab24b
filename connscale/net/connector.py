"""A lean transport that connects: Twisted's `Connector` and `tcp.Client` in one.

`ClientTransport` opens a non-blocking connection to a `DialTarget` (one per route,
shared by its connections) and, once connected, is a `transport.Connection` like any
other: every event after the connect goes straight to `Connection.on_event`.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import attrs
from twisted.internet import error
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IConnector, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from connscale.net.dispatch import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, Loop
from connscale.net.transport import LINGER_RST, Connection, socket_call

# Linux: bind() picks no port, connect() does; so a source IP's ephemeral range
# is shared per destination instead of exhausted by the first 28k binds.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


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
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
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
        self.loop.add(self.fd, _Connecting(self), EPOLLOUT)

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

    def _connect_done(self, events: int) -> None:
        """connect() finished, one way or the other (`_Connecting` is told first)."""
        if events & (EPOLLERR | EPOLLHUP):
            try:
                err = socket_call(self.fd, lambda s: s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
            except OSError as e:
                err = e.errno or 0
            self._close_fd()
            self.connecting = False
            self._connect_failed(err or errno.ECONNREFUSED)
            return
        if not events & EPOLLOUT:
            return
        self.connecting = False
        self.loop.hand_over(self.fd, self, EPOLLIN)
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


class _Connecting:
    """The loop's handler for a `ClientTransport`'s fd while its connect() is in flight.

    A handler of its own rather than a flag the transport tests on every event: once
    connected, the transport takes the fd over (`Loop.hand_over`) and the loop calls
    `Connection.on_event` straight, the hot path of every pong.
    """

    __slots__ = ("transport",)

    def __init__(self, transport: ClientTransport) -> None:
        self.transport = transport

    def on_event(self, events: int) -> None:
        self.transport._connect_done(events)

    def fail(self, failure: Failure) -> None:
        self.transport.fail(failure)
