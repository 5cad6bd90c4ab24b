"""TCP transports tuned for many small, rarely-written connections.

Twisted's `tcp.Connection.write` always buffers and asks epoll for a writable
event (two `epoll_ctl` calls and an extra wake-up per message). A ping or a
pong is a few bytes on an idle socket: sent at once it almost always goes
whole, so we write through and only fall back to Twisted's path for a rest,
on EAGAIN, or on any error (measured in bench/cpu_per_rtt.py: about a third
of the CPU per round trip).

They also set the write-buffer attributes at construction: Twisted adds them
on the first write, and an attribute added after thousands of instances exist
gives every instance a full dict (~760 B) instead of CPython's shared-key
storage (bench/mem_breakdown.py).
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Callable

from twisted.internet import tcp
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from zope.interface import implementer

# Linux: bind() picks no port, connect() does; so a source IP's ephemeral range
# is shared per destination instead of exhausted by the first 28k binds.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class WriteThrough:
    """Mixin for `tcp.Connection` subclasses."""

    def _presize(self) -> None:
        self.dataBuffer = b""
        self.offset = 0

    def write(self, data: bytes) -> None:
        if (
            self.connected  # type: ignore[attr-defined]
            and not self._writeDisconnected  # type: ignore[attr-defined]
            and not self._tempDataBuffer  # type: ignore[attr-defined]
            and self.offset == len(self.dataBuffer)
            and type(data) is bytes
        ):
            try:
                sent = self.socket.send(data)  # type: ignore[attr-defined]
            except OSError as e:
                # EAGAIN: queue it; any other error: Twisted's own path meets
                # it and closes the connection the usual way.
                if e.errno not in _RETRY:
                    tcp.Connection.write(self, data)  # type: ignore[arg-type]
                    return
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        tcp.Connection.write(self, data)  # type: ignore[arg-type]


class ServerTransport(WriteThrough, tcp.Server):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._presize()


class ServerPort(tcp.Port):
    transport = ServerTransport


@implementer(ILogObserver)
class AcceptErrors:
    """Turns the listening port's accept-error log events into failure counts.

    Twisted logs one line per connection it has to drop at the fd limit
    ("EMFILE recovery: Closed socket from ...") and per failed accept; at
    100k connections that floods the log, while the count by cause is what
    explains the stall (the original's finding 3: the server sees EMFILE on
    accept). Everything else is passed on.
    """

    def __init__(self, fail: Callable[[str, str], None], forward: ILogObserver) -> None:
        self.fail = fail
        self.forward = forward

    def __call__(self, event: dict[str, Any]) -> None:
        fmt = event.get("log_format") or ""
        if fmt.startswith("EMFILE recovery: Closed socket"):
            self.fail("connect", "EMFILE")
        elif fmt.startswith("Could not accept new connection"):
            self.fail("connect", str(event.get("acceptError", "unknown")))
        elif not fmt.startswith(("EMFILE encountered", "Re-reserving EMFILE")):
            self.forward(event)


def adopt_port(reactor: Any, sock: socket.socket, factory: Any,
               fail: Callable[[str, str], None] | None = None) -> ServerPort:
    """Like `reactor.adoptStreamPort`, with our connection class; accept
    errors go to `fail(phase, cause)` when given."""
    port = ServerPort._fromListeningDescriptor(reactor, sock.fileno(), sock.family, factory)
    if fail is not None:
        port._logger = Logger(namespace="connscale.accept", observer=AcceptErrors(fail, globalLogPublisher))
    port.startListening()
    return port


class ClientTransport(WriteThrough, tcp.Client):
    """A client socket that binds a source IP without taking a port."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._presize()
        super().__init__(*args, **kw)

    def createInternetSocket(self) -> socket.socket:
        s = super().createInternetSocket()
        if self.addressFamily == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        return s
