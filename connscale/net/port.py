"""The lean listening port: the accept loop that gives each connection a `ServerTransport`.

Twisted's `tcp.Port` with the same contract (`IListeningPort`, `factory.buildProtocol`,
`makeConnection`), dispatched by connscale's loop; what it adds is the bounded batch
per turn and the reserved fd for the EMFILE busy loop (below).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from connscale.compat.sockets import raw_accept
from connscale.net.dispatch import EPOLLIN, Loop
from connscale.net.transport import ServerTransport, tcp_address

log = Logger(namespace="connscale.transport")

#: Connections accepted per readable event of a listening socket; the rest
#: wait for the next turn, so a ramp cannot starve the pings of a worker.
ACCEPT_BATCH = 64


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
        return tcp_address(self.socket.family, self.socket.getsockname())

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
            protocol = factory.buildProtocol(tcp_address(family, addr))
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
