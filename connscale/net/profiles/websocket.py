"""`websocket`: the RFC 6455 client handshake, then a masked ping frame every interval.

The session opens with the upgrade: `101 Switching Protocols` with the right
`Sec-WebSocket-Accept` (and the subprotocol asked for, if any). A status of 400 or
more at the upgrade is a refusal in the server's words (`http_503`: a server at its
connection limit), a wrong accept key `ws_bad_accept`. Then each keepalive is a
ping frame with a 4-byte payload; success is the pong that echoes it. A close frame
is a refusal with its code (`ws_close_1001`, ...) and reason; a masked, reserved-bit,
oversized or fragmented control frame is `bad_frame`; data frames are read and
dropped (an echo server's chatter costs nothing).

Hand-written rather than autobahn's `WebSocketClientProtocol` (docs/design.md,
"WebSocket: why not autobahn's protocol"): the whole per-connection state here is a
few slots; autobahn's protocol object carries its options, its frame parser state
and its handshake dicts per connection, measured by bench/ws_cost.py.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import struct

from connscale.net.profiles.base import Profile, ProfileConnection, undecided
from connscale.net.profiles.httphead import BadHead, parse_head, refused, split_head

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_KNOWN_OPS = frozenset({OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG})
_rand32 = random.Random().getrandbits


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer `key` with."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame (FIN set, masked with a fresh key), for control frames (<= 125 bytes)."""
    mask = _rand32(32)
    n = len(payload)
    if n:
        key = (mask.to_bytes(4, "big") * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    else:
        body = b""
    return bytes((0x80 | opcode, 0x80 | n)) + mask.to_bytes(4, "big") + body


def close_cause(code: int) -> str:
    return f"ws_close_{code}" if 1000 <= code <= 1015 else "ws_close_other"


class WebSocketConnection(ProfileConnection):
    """stage 0: waiting for the upgrade's answer (`want` = the accept key expected);
    stage 1: frames (`want` = the payload of the ping in flight, `need` = pings sent)."""

    __slots__ = ()

    def dataReceived(self, data: bytes) -> None:
        if self.overflow(data):
            return
        if self.stage == 0 and not self._upgraded():
            return
        self._frames()

    def _upgraded(self) -> bool:
        parts = split_head(self.buf)
        if parts is None:
            if b"HTTP/1."[: len(self.buf)] != self.buf[:7] and not undecided(self.buf):
                self.foreign(self.buf)
            return False
        raw, self.buf = parts
        pool = self.pool
        try:
            head = parse_head(raw)
        except BadHead:
            self.foreign(raw)
            return False
        if refused(self, head):
            return False
        if head.status != 101 or not head.has_token(b"upgrade", b"websocket") \
                or not head.has_token(b"connection", b"upgrade"):
            self.foreign(head.line)
            return False
        if head.get(b"sec-websocket-accept") != self.want:
            pool.refused(self, "ws_bad_accept",
                         b"Sec-WebSocket-Accept: " + head.get(b"sec-websocket-accept")[:64])
            return False
        asked = pool.profile.options.subprotocol
        if asked is not None and head.get(b"sec-websocket-protocol") != asked.encode():
            pool.refused(self, "ws_bad_accept",
                         b"Sec-WebSocket-Protocol: " + head.get(b"sec-websocket-protocol")[:64])
            return False
        self.stage = 1
        self.want = None
        pool.session_open(self)
        return self.alive

    def _frames(self) -> None:
        pool = self.pool
        buf = self.buf
        while len(buf) >= 2 and self.alive:
            b0, b1 = buf[0], buf[1]
            opcode, n = b0 & 0x0F, b1 & 0x7F
            if b0 & 0x70 or b1 & 0x80 or opcode not in _KNOWN_OPS:
                # Reserved bits (no extension was agreed), a masked server frame, an unknown opcode.
                self._bad()
                return
            start = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, start = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, start = struct.unpack_from("!Q", buf, 2)[0], 10
            if n > pool.profile.options.max_reply:
                self.too_large()
                return
            if opcode >= OP_CLOSE and (n > 125 or not b0 & 0x80):
                self._bad()  # control frames are short and never fragmented
                return
            if len(buf) < start + n:
                break
            payload, buf = buf[start:start + n], buf[start + n:]
            if opcode == OP_PONG:
                if self.want is not None and payload == self.want:
                    self.want = None
                    pool.pong(self)
            elif opcode == OP_PING:
                if self.transport is not None:
                    self.transport.write(masked_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code = struct.unpack_from("!H", payload)[0] if n >= 2 else 1005
                if self.transport is not None:
                    self.transport.write(masked_frame(OP_CLOSE, payload[:2]))
                self.buf = b""
                pool.refused(self, close_cause(code), b"close %d %s" % (code, payload[2:]))
                return
        self.buf = buf if self.alive else b""

    def _bad(self) -> None:
        self.buf = b""
        self.pool.bad_reply(self, "bad_frame")


class WebSocketProfile(Profile):
    name = "websocket"
    connection = WebSocketConnection
    opens = True

    def opening(self, conn: WebSocketConnection, host: str, port: int) -> bytes:
        o = self.options
        key = base64.b64encode(os.urandom(16))
        conn.want = accept_for(key)
        lines = [f"GET {o.path} HTTP/1.1", f"Host: {o.host or host}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key.decode()}", "Sec-WebSocket-Version: 13"]
        if o.subprotocol:
            lines.append(f"Sec-WebSocket-Protocol: {o.subprotocol}")
        lines += [f"{name}: {value}" for name, value in o.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def ping_for(self, conn: WebSocketConnection) -> bytes:
        conn.need = (conn.need + 1) & 0xFFFF
        payload = struct.pack("!HH", conn.serial & 0xFFFF, conn.need)
        conn.want = payload
        return masked_frame(OP_PING, payload)

    def describe(self) -> str:
        return f"websocket {self.options.path}"


PROFILE = WebSocketProfile
