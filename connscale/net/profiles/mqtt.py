"""`mqtt`: MQTT 3.1.1 CONNECT, then PINGREQ/PINGRESP every interval.

Each connection CONNECTs with its own client id (`client_prefix`, this worker's pid and
the connection's number: a broker drops the older of two sessions with one id) and a
keepalive that the interval and timeout fit in (a broker closes a client silent for 1.5
keepalives). The session opens with CONNACK return code 0; any other code is a refusal
named by its code (`connack_3`: server unavailable) with its meaning as the server's
words. A broker at its own connection cap (mosquitto's `max_connections`) closes new
connections before any CONNACK: that is phase `connect`, `closed_by_peer` or ECONNRESET.
"""

from __future__ import annotations

import math
import os
import struct

from connscale.net.profiles.base import Profile, ProfileConnection

CONNACK, PUBLISH, PINGRESP = 0x20, 0x30, 0xD0
PINGREQ = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"

#: CONNACK return codes (MQTT 3.1.1, 3.2.2.3), in the standard's words.
CONNACK_CODES = {
    1: "connection refused: unacceptable protocol version",
    2: "connection refused: identifier rejected",
    3: "connection refused: server unavailable",
    4: "connection refused: bad user name or password",
    5: "connection refused: not authorized",
}


def remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(s: str) -> bytes:
    data = s.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, keepalive: int, user: str | None, password: str | None) -> bytes:
    flags = 0x02  # clean session: a load test leaves nothing behind on the broker
    payload = _utf8(client_id)
    if user is not None:
        flags |= 0x80
        payload += _utf8(user)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    variable = _utf8("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive)
    body = variable + payload
    return b"\x10" + remaining_length(len(body)) + body


class MqttConnection(ProfileConnection):
    __slots__ = ()

    def dataReceived(self, data: bytes) -> None:
        if data == PINGRESP_BYTES and not self.buf and self.state == self.OPEN:
            self.pool.pong(self)
            return
        if self.overflow(data):
            return
        pool = self.pool
        buf = self.buf
        while buf and self.alive:
            if self.state == self.HANDSHAKING and (buf[0] != CONNACK or len(buf) > 1 and buf[1] != 2):
                self._bad(buf)  # before the session, only a CONNACK is MQTT
                return
            # Fixed header: type and flags, then 1-4 bytes of remaining length.
            n = shift = 0
            i = 1
            while True:
                if i >= len(buf):
                    self.buf = buf
                    return
                byte = buf[i]
                n |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    self._bad(buf)
                    return
            if i + n > pool.profile.options.max_reply:
                self.too_large()
                return
            if len(buf) < i + n:
                break
            kind, body, buf = buf[0] & 0xF0, buf[i:i + n], buf[i + n:]
            if kind == PINGRESP and n == 0:
                pool.pong(self)
            elif kind == CONNACK and n == 2 and self.state == self.HANDSHAKING:
                code = body[1]
                if code == 0:
                    pool.session_open(self)
                else:
                    cause = f"connack_{code}" if code in CONNACK_CODES else "connack_other"
                    words = CONNACK_CODES.get(code, "connection refused")
                    pool.refused(self, cause, f"CONNACK {code} ({words})")
                    return
            elif kind == PUBLISH and self.state == self.OPEN:
                pass  # a retained message or a broker's own: read and dropped
            else:
                self._bad(buf)
                return
        self.buf = buf if self.alive else b""

    def _bad(self, buf: bytes) -> None:
        self.buf = b""
        if self.stage == 0 and self.state == self.HANDSHAKING:
            self.foreign(buf)  # the first bytes are not MQTT: another protocol (or TLS)
        else:
            self.pool.bad_reply(self, "bad_frame")


class MqttProfile(Profile):
    name = "mqtt"
    connection = MqttConnection
    opens = True
    ping = PINGREQ

    def __init__(self, options, interval, timeout):
        super().__init__(options, interval, timeout)
        # The broker's deadline (1.5 keepalives) must outlast our interval plus a late pong.
        self.keepalive = max(1, min(65535, math.ceil(interval + timeout)))
        self._id_base = f"{options.client_prefix}{os.getpid():x}-"

    def opening(self, conn: MqttConnection, host: str, port: int) -> bytes:
        o = self.options
        return connect_packet(f"{self._id_base}{conn.serial}", self.keepalive, o.user, o.password)

    def describe(self) -> str:
        return f"mqtt keepalive {self.keepalive}s"


PROFILE = MqttProfile
