"""connscale's own server speaking WebSocket (`server.framing: websocket`).

The RFC 6455 upgrade, then: a ping frame is answered with a pong frame carrying its
payload, a text frame `Ping` with a text frame `Pong`, a close frame with a close frame.
So `connscale run` measures WebSocket keepalives against its own server (and the TLS
layer serves line, raw and websocket alike). Like the other framings it counts on the
shared `ServerState`, bounds what it buffers (`server.max_line` per frame, a handshake
of at most HANDSHAKE_MAX bytes) and turns anything else into a counted violation and a
close, never a crash.
"""

from __future__ import annotations

import struct

from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import Protocol

from connscale.net.profiles.httphead import MAX_HEADERS
from connscale.net.profiles.websocket import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, accept_for
from connscale.net.wire import FLOOD_MESSAGES, ServerState, _ServerMixin

#: Bytes an upgrade request may take (browsers send ~500).
HANDSHAKE_MAX = 8192
PONG_TEXT = b"\x81\x04Pong"


def _frame(opcode: int, payload: bytes) -> bytes:
    """A server frame: FIN, unmasked."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    return bytes((0x80 | opcode, 126)) + struct.pack("!H", n) + payload


def _unmask(mask: bytes, body: bytes) -> bytes:
    n = len(body)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(body, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class WebSocketServerProtocol(_ServerMixin, Protocol):
    transport: ITransport  # the mixin's, restated: the class's own line settles the two bases

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.buf = b""
        self.upgraded = False

    def dataReceived(self, data: bytes) -> None:
        if self.violated:
            return
        self.buf = self.buf + data if self.buf else data
        if not self.upgraded:
            if not self._upgrade():
                return
        self._frames()

    def _upgrade(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > HANDSHAKE_MAX:
                self._refuse(b"431 Request Header Fields Too Large", "line_too_long")
            return False
        lines = self.buf[:end].split(b"\r\n")
        self.buf = self.buf[end + 4:]
        headers: dict[bytes, bytes] = {}
        for line in lines[1:MAX_HEADERS + 1]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        request = lines[0].split(b" ")
        key = headers.get(b"sec-websocket-key", b"")
        if (len(request) != 3 or request[0] != b"GET" or not request[2].startswith(b"HTTP/1.1")
                or b"websocket" not in headers.get(b"upgrade", b"").lower() or len(key) != 24
                or headers.get(b"sec-websocket-version") != b"13"):
            self._refuse(b"400 Bad Request", "bad_handshake")
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n")
        self.upgraded = True
        return True

    def _refuse(self, status: bytes, kind: str) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.buf = b""
        self.violation(kind)

    def _frames(self) -> None:
        buf = self.buf
        answered = 0
        out = []
        while len(buf) >= 6 and not self.violated:
            b0, b1 = buf[0], buf[1]
            opcode, n = b0 & 0x0F, b1 & 0x7F
            start = 6
            if b0 & 0x70 or not b1 & 0x80:
                self.violation("bad_frame")  # reserved bits, or an unmasked client frame
                break
            if n == 126:
                if len(buf) < 8:
                    break
                n, start = struct.unpack_from("!H", buf, 2)[0], 8
            elif n == 127:
                self.violation("line_too_long")
                break
            if n > self.state.max_line:
                self.violation("line_too_long")
                break
            if len(buf) < start + n:
                break
            payload = _unmask(buf[start - 4:start], buf[start:start + n])
            buf = buf[start + n:]
            answered += 1
            if answered > FLOOD_MESSAGES:
                self.violation("flood")
                break
            if opcode == OP_PING:
                out.append(_frame(OP_PONG, payload))
            elif opcode == OP_TEXT and payload == b"Ping":
                out.append(PONG_TEXT)
            elif opcode == OP_CLOSE:
                out.append(_frame(OP_CLOSE, payload[:2]))
                self.transport.write(b"".join(out))
                self.transport.loseConnection()
                self.buf = b""
                return
            elif opcode == OP_PONG:
                continue
            else:
                self.violation("unknown_line")
                break
            self.pinged = True
            c = self.state.counters
            c.pings += 1
            c.pongs += 1
        if out and not self.violated:
            self.transport.write(b"".join(out))
        self.buf = b"" if self.violated else buf
        if len(self.buf) > self.state.max_line + 14 and not self.violated:
            self.violation("line_too_long")
