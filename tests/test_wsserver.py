"""connscale's own WebSocket server (net/wsserver.py): the upgrade, pings and text pings, and every bad input
counted as a violation and closed (StringTransport; the real thing runs in tests/test_e2e_servers.py)."""

from __future__ import annotations

import os
import struct

from twisted.internet.testing import StringTransport

from connscale.metrics.counters import Counters
from connscale.net.profiles.websocket import OP_CLOSE, OP_PING, OP_TEXT, accept_for
from connscale.net.server import PingServerFactory

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /socket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | opcode,)) + (bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,))
                                                     + struct.pack("!H", n))
    return head + mask + body


def server(max_line: int = 1024):
    counters = Counters()
    proto = PingServerFactory("websocket", counters, max_line).buildProtocol(None)
    t = StringTransport()
    proto.makeConnection(t)
    return proto, t, counters


def test_upgrade_then_ping_frames_and_text_pings_split_or_merged():
    for size in (None, 1, 5):
        proto, t, counters = server()
        data = UPGRADE + client_frame(OP_PING, b"abcd") + client_frame(OP_TEXT, b"Ping")
        chunks = [data] if size is None else [data[i:i + size] for i in range(0, len(data), size)]
        for chunk in chunks:
            proto.dataReceived(chunk)
        out = t.value()
        assert out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: " + accept_for(KEY) + b"\r\n" in out
        assert out.endswith(b"\x8a\x04abcd\x81\x04Pong")
        assert counters.pings == 2 and counters.pongs == 2 and counters.failures == {}


def test_close_is_answered_and_the_connection_ends():
    proto, t, counters = server()
    proto.dataReceived(UPGRADE + client_frame(OP_CLOSE, struct.pack("!H", 1000)))
    assert t.value().endswith(b"\x88\x02\x03\xe8") and t.disconnecting


def test_bad_inputs_are_violations_and_closes():
    cases = {
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n": "bad_handshake",  # no upgrade
        b"X" * 9000: "line_too_long",  # a handshake that never ends
        UPGRADE + bytes((0x89, 4)) + b"abcd": "bad_frame",  # unmasked
        UPGRADE + client_frame(OP_PING, b"x" * 2000): "line_too_long",  # over server.max_line
        UPGRADE + client_frame(0x2, b"binary"): "unknown_line",
        UPGRADE + client_frame(OP_PING, b"p") * 40: "flood",
    }
    for data, kind in cases.items():
        proto, t, counters = server()
        proto.dataReceived(data)
        assert counters.protocol == {kind: 1}, (data[:40], counters.protocol)
        assert t.disconnecting
    proto, t, _ = server()
    proto.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert t.value().startswith(b"HTTP/1.1 400 Bad Request")
