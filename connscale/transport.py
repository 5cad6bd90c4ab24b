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
from typing import Any

from twisted.internet import tcp

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


def adopt_port(reactor: Any, sock: socket.socket, factory: Any) -> ServerPort:
    """Like `reactor.adoptStreamPort`, with our connection class."""
    port = ServerPort._fromListeningDescriptor(reactor, sock.fileno(), sock.family, factory)
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
