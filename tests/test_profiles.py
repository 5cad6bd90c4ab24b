"""Each profile's parser fed whole, split, merged, oversized and hostile bytes (STYLE rule 14).

The parsers forward to a recording pool (the real one's hooks, its real Counters), so each
test states what the server's bytes must become: a session opened, a pong, a refusal in
the server's words, or a named protocol error; never an exception, and never a buffer
larger than `max_reply`.
"""

from __future__ import annotations

import base64
import random
import struct

import attrs
import pytest

from connscale.config.target import PROTOCOLS, ProfileOptions
from connscale.metrics.counters import APP_CAUSES, PROTOCOL_KINDS, Counters
from connscale.net import profiles
from connscale.net.profiles import make_profile
from connscale.net.profiles.mqtt import connect_packet
from connscale.net.profiles.websocket import accept_for
from connscale.net.wire import ClientConnection

OPEN, HANDSHAKING, CLOSING = ClientConnection.OPEN, ClientConnection.HANDSHAKING, ClientConnection.CLOSING


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class RecordingPool:
    """The hooks a profile's parser calls, recorded; state moves as the real pool moves it."""

    framing = "line"

    def __init__(self, protocol: str, **options: object) -> None:
        self.profile = make_profile(ProfileOptions(protocol=protocol, **options), 5.0, 1.0)  # type: ignore[arg-type]
        self.reply = b"Pong\n"
        self.counters = Counters()
        self.events: list[tuple[str, ...]] = []
        self._serial = 0

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def connect(self) -> ClientConnection:
        conn = self.profile.connection(self, 0)
        conn.transport = Transport()  # type: ignore[assignment]
        conn.state = HANDSHAKING if self.profile.opens else OPEN
        if self.profile.opens:
            conn.transport.write(self.profile.opening(conn, "127.0.0.1", 1))  # type: ignore[union-attr]
        return conn

    def session_open(self, conn: ClientConnection) -> None:
        assert conn.state == HANDSHAKING
        conn.state = OPEN
        self.events.append(("open",))

    def pong(self, conn: ClientConnection) -> None:
        conn.sent_at = 0.0
        self.events.append(("pong",))

    def refused(self, conn: ClientConnection, cause: str, words: bytes | str) -> None:
        assert cause in APP_CAUSES, cause
        self.counters.say(cause, words)
        conn.state = CLOSING
        self.events.append(("refused", cause, self.counters.said[cause]))

    def bad_reply(self, conn: ClientConnection, kind: str) -> None:
        assert kind in PROTOCOL_KINDS, kind
        conn.state = CLOSING
        self.events.append(("bad", kind))


def feed(pool: RecordingPool, conn: ClientConnection, data: bytes, sizes: int | None = None) -> None:
    if sizes is None:
        conn.dataReceived(data)
        return
    for i in range(0, len(data), sizes):
        if conn.state == CLOSING:
            break
        conn.dataReceived(data[i:i + sizes])


def every_split(protocol: str, data: bytes, expected: list[tuple[str, ...]], opened: bool = False,
                **options: object) -> None:
    """`data` in one read, in reads of every size, and byte by byte: the same events."""
    for size in (None, *range(1, min(len(data), 40) + 1)):
        pool = RecordingPool(protocol, **options)
        conn = pool.connect()
        if opened:
            conn.state = OPEN
            conn.sent_at = 1.0
        feed(pool, conn, data, size)
        assert pool.events == expected, f"read size {size}"


# -- the registry -------------------------------------------------------------------------------

def test_every_protocol_of_the_config_has_a_profile_and_back():
    assert set(profiles.MODULES) == set(PROTOCOLS)
    for name in PROTOCOLS:
        assert profiles.load(name).name == name


def test_an_unknown_profile_is_one_line():
    with pytest.raises(profiles.ProfileError, match="unknown protocol 'stomp'"):
        profiles.load("stomp")


# -- redis ----------------------------------------------------------------------------------------

def test_redis_opens_with_a_ping_and_counts_pongs_split_or_merged():
    every_split("redis", b"+PONG\r\n+PONG\r\n", [("open",), ("pong",)])


def test_redis_authenticates_first_when_given_a_password():
    pool = RecordingPool("redis", user="app", password="s3cret")
    conn = pool.connect()
    assert conn.transport.written[0] == (b"*3\r\n$4\r\nAUTH\r\n$3\r\napp\r\n$6\r\ns3cret\r\n"  # type: ignore[union-attr]
                                         b"*1\r\n$4\r\nPING\r\n")
    every_split("redis", b"+OK\r\n+PONG\r\n", [("open",)], password="s3cret")
    every_split("redis", b"-WRONGPASS invalid username-password pair\r\n",
                [("refused", "redis_noauth", "-WRONGPASS invalid username-password pair")], password="x")


def test_redis_maxclients_is_a_refusal_in_its_words():
    every_split("redis", b"-ERR max number of clients reached\r\n",
                [("refused", "redis_maxclients", "-ERR max number of clients reached")])


def test_redis_other_errors_are_bounded_causes():
    pool = RecordingPool("redis")
    conn = pool.connect()
    conn.dataReceived(b"-NOAUTH Authentication required.\r\n")
    assert pool.events[0][:2] == ("refused", "redis_noauth")
    pool = RecordingPool("redis")
    conn = pool.connect()
    conn.dataReceived(b"-WEIRD " + b"x" * 5000 + b"\r\n")
    assert pool.events[0][:2] == ("refused", "redis_error")
    assert len(pool.events[0][2]) <= 200  # the words are a bounded sample


def test_redis_given_an_http_server_or_tls_fails_fast_with_a_named_kind():
    every_split("redis", b"HTTP/1.1 400 Bad Request\r\n\r\n", [("bad", "unexpected_reply")])
    every_split("redis", b"\x15\x03\x03\x00\x02\x02\x46", [("bad", "tls_reply")])


def test_redis_line_without_end_is_cut_at_max_reply():
    pool = RecordingPool("redis", max_reply=1024)
    conn = pool.connect()
    for _ in range(100):
        if conn.state == CLOSING:
            break
        conn.dataReceived(b"+" + b"A" * 200)
    assert pool.events == [("bad", "too_large")]
    assert len(conn.buf) <= 1024


# -- http -----------------------------------------------------------------------------------------

OK = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")


def test_http_request_has_method_path_host_and_headers():
    pool = RecordingPool("http", method="HEAD", path="/health", host="example.org:8080",
                         headers=(("X-Test", "1"),))
    conn = pool.connect()
    request = conn.transport.written[0]  # type: ignore[union-attr]
    assert request.startswith(b"HEAD /health HTTP/1.1\r\nHost: example.org:8080\r\n")
    assert b"\r\nX-Test: 1\r\n" in request and request.endswith(b"\r\n\r\n")


def test_http_content_length_and_chunked_bodies_split_or_merged():
    every_split("http", OK + CHUNKED + OK, [("open",), ("pong",), ("pong",)])
    pool = RecordingPool("http")
    pool.connect().dataReceived(OK)
    assert pool.counters.said["server"] == "Server: nginx/1.22.1"


@pytest.mark.parametrize("response", [OK, CHUNKED], ids=["content-length", "chunked"])
def test_http_max_reply_bounds_each_response_not_their_sum(response: bytes):
    # One response per ping, more than max_reply's worth of them: each ends the
    # count (a chunked one with its trailer, as one with a Content-Length with its body).
    assert len(response) * 100 > 4096
    for size in (None, 1, 7):
        pool = RecordingPool("http", max_reply=4096)
        conn = pool.connect()
        conn.state = OPEN
        for _ in range(100):
            conn.sent_at = 1.0
            feed(pool, conn, response, size)
        assert pool.events == [("pong",)] * 100, f"read size {size}"


def test_http_refusals_by_status_and_close():
    every_split("http", b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                [("refused", "http_503", "HTTP/1.1 503 Service Unavailable")])
    every_split("http", b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
                [("refused", "http_connection_close", "HTTP/1.1 200 OK with Connection: close")])
    every_split("http", b"HTTP/1.1 200 OK\r\n\r\nbody until close",
                [("refused", "http_connection_close",
                  "HTTP/1.1 200 OK (no Content-Length: the body ends with the connection)")])


def test_http_interim_responses_are_skipped():
    every_split("http", b"HTTP/1.1 100 Continue\r\n\r\n" + OK, [("open",)])


def test_http_bodies_are_bounded_and_never_buffered():
    pool = RecordingPool("http", max_reply=4096)
    conn = pool.connect()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n")
    assert pool.events == [("bad", "too_large")]
    pool = RecordingPool("http", max_reply=4096)
    conn = pool.connect()
    conn.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(1000):  # a gigabyte's worth would go on: it is cut after max_reply
        if conn.state == CLOSING:
            break
        conn.dataReceived(b"400\r\n" + b"x" * 1024 + b"\r\n")
        assert len(conn.buf) <= 4096
    assert pool.events == [("bad", "too_large")]


@pytest.mark.parametrize("junk", [
    b"+PONG\r\n", b"SSH-2.0-OpenSSH_9.2\r\n", b"\x16\x03\x01\x02\x00\x01", b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nbad header line\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
])
def test_http_hostile_or_foreign_replies_are_named(junk: bytes):
    for size in (None, 1, 3):
        pool = RecordingPool("http")
        feed(pool, pool.connect(), junk, size)
        assert len(pool.events) == 1 and pool.events[0][0] == "bad", (junk, size, pool.events)


# -- websocket ------------------------------------------------------------------------------------

def _upgrade(pool: RecordingPool, conn: ClientConnection, extra: bytes = b"") -> bytes:
    request = conn.transport.written[0]  # type: ignore[union-attr]
    key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
    assert len(base64.b64decode(key)) == 16
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n" + extra + b"\r\n")


def unmask(frame: bytes) -> tuple[int, bytes]:
    assert frame[1] & 0x80, "a client frame is masked"
    n = frame[1] & 0x7F
    mask, body = frame[2:6], frame[6:6 + n]
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def server_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x80 | opcode, n)) if n < 126 else bytes((0x80 | opcode, 126)) + struct.pack("!H", n)
    return head + payload


def test_websocket_handshake_then_ping_pong_split_or_merged():
    for size in (None, 1, 2, 7):
        pool = RecordingPool("websocket", path="/socket", subprotocol="chat")
        conn = pool.connect()
        request = conn.transport.written[0]  # type: ignore[union-attr]
        assert request.startswith(b"GET /socket HTTP/1.1\r\n") and b"Sec-WebSocket-Protocol: chat" in request
        feed(pool, conn, _upgrade(pool, conn, b"Sec-WebSocket-Protocol: chat\r\n"), size)
        ping = pool.profile.ping_for(conn)
        opcode, payload = unmask(ping)
        assert opcode == 0x9 and len(payload) == 4
        conn.sent_at = 1.0
        feed(pool, conn, server_frame(0x1, b"chatter") + server_frame(0xA, b"zzzz") + server_frame(0xA, payload), size)
        assert pool.events == [("open",), ("pong",)], size  # the unsolicited pong is not ours


def test_websocket_answers_the_servers_ping():
    pool = RecordingPool("websocket")
    conn = pool.connect()
    conn.dataReceived(_upgrade(pool, conn) + server_frame(0x9, b"hi"))
    assert unmask(conn.transport.written[-1]) == (0xA, b"hi")  # type: ignore[union-attr]


def test_websocket_refusals_wrong_accept_503_and_close():
    pool = RecordingPool("websocket")
    conn = pool.connect()
    conn.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: bm9wZQ==\r\n\r\n")
    assert pool.events[0][:2] == ("refused", "ws_bad_accept")
    every_split("websocket", b"HTTP/1.1 503 Service Unavailable\r\nServer: AutobahnPython\r\n\r\n",
                [("refused", "http_503", "HTTP/1.1 503 Service Unavailable")])
    pool = RecordingPool("websocket")
    conn = pool.connect()
    conn.dataReceived(_upgrade(pool, conn) + server_frame(0x8, struct.pack("!H", 1001) + b"going away"))
    assert pool.events[-1] == ("refused", "ws_close_1001", "close 1001 going away")


@pytest.mark.parametrize("frame", [
    bytes((0x81 | 0x40, 1)) + b"x",            # a reserved bit
    bytes((0x81, 0x81)) + b"mask" + b"x",      # a masked server frame
    bytes((0x83, 1)) + b"x",                   # an unknown opcode
    bytes((0x09, 1)) + b"x",                   # a fragmented control frame
    bytes((0x89, 126)) + struct.pack("!H", 200) + b"x" * 200,  # a control frame over 125 bytes
])
def test_websocket_bad_frames(frame: bytes):
    pool = RecordingPool("websocket")
    conn = pool.connect()
    conn.dataReceived(_upgrade(pool, conn) + frame)
    assert pool.events == [("open",), ("bad", "bad_frame")]


def test_websocket_huge_frame_is_refused_from_its_header():
    pool = RecordingPool("websocket", max_reply=4096)
    conn = pool.connect()
    conn.dataReceived(_upgrade(pool, conn) + bytes((0x82, 127)) + struct.pack("!Q", 1 << 30))
    assert pool.events == [("open",), ("bad", "too_large")]


def test_websocket_given_a_plain_http_server():
    every_split("websocket", OK, [("bad", "unexpected_reply")])


# -- mqtt -----------------------------------------------------------------------------------------

def test_mqtt_connect_packet_fields():
    pool = RecordingPool("mqtt", client_prefix="t-", user="u", password="p")
    conn = pool.connect()
    packet = conn.transport.written[0]  # type: ignore[union-attr]
    assert packet[0] == 0x10 and packet[2:9] == b"\x00\x04MQTT\x04"
    assert packet[9] == 0x80 | 0x40 | 0x02  # user, password, clean session
    keepalive = struct.unpack("!H", packet[10:12])[0]
    assert keepalive >= 6  # interval 5 s + timeout 1 s fit in it
    assert b"t-" in packet and packet.endswith(b"\x00\x01u\x00\x01p")
    other = pool.connect().transport.written[0]  # type: ignore[union-attr]
    assert other != packet  # a unique client id per connection
    assert connect_packet("x" * 200, 10, None, None)[1] & 0x80  # a long packet gets a 2-byte length


def test_mqtt_connack_then_pingresp_split_or_merged():
    every_split("mqtt", b"\x20\x02\x00\x00\xd0\x00\xd0\x00", [("open",), ("pong",), ("pong",)])


@pytest.mark.parametrize("code,cause", [(3, "connack_3"), (5, "connack_5"), (0x80, "connack_other")])
def test_mqtt_connack_refusals(code: int, cause: str):
    pool = RecordingPool("mqtt")
    pool.connect().dataReceived(bytes((0x20, 2, 0, code)))
    assert pool.events[0][:2] == ("refused", cause)
    assert pool.events[0][2].startswith(f"CONNACK {code} (")


@pytest.mark.parametrize("junk", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x16\x03\x03\x00\x10",
                                  b"\x20\xff\xff\xff\xff\x01", b"\x50\x02\x00\x01"])
def test_mqtt_foreign_or_hostile(junk: bytes):
    for size in (None, 1):
        pool = RecordingPool("mqtt", max_reply=1024)
        feed(pool, pool.connect(), junk, size)
        assert len(pool.events) <= 1 and all(e[0] == "bad" for e in pool.events), (junk, pool.events)
        if size is None:
            assert pool.events, junk


# -- custom ---------------------------------------------------------------------------------------

def test_custom_send_with_escapes_and_number():
    pool = RecordingPool("custom", send="HELLO {n}\\r\\n\\x00", expect="OK")
    conn = pool.connect()
    assert pool.profile.ping is None
    assert pool.profile.ping_for(conn) == f"HELLO {conn.serial}\r\n\x00".encode()  # type: ignore[attr-defined]


def test_custom_prefix_split_and_mismatch():
    every_split("custom", b"OK then more", [("pong",)], opened=True, expect="OK")
    for size in (None, 1, 2):
        pool = RecordingPool("custom", expect="OK")
        conn = pool.connect()
        conn.sent_at = 1.0
        feed(pool, conn, b"NO way", size)
        # Named as soon as it cannot match: its first bytes are the server's words.
        assert pool.events == [("refused", "expect_mismatch", "NO way"[: size or 6])]


def test_custom_regex_is_bounded():
    every_split("custom", b"xx +PONG yy", [("pong",)], opened=True, expect_regex=r"\+P[O]NG")
    pool = RecordingPool("custom", expect_regex="never")
    conn = pool.connect()
    conn.sent_at = 1.0
    for _ in range(10):
        if conn.state == CLOSING:
            break
        conn.dataReceived(b"z" * 1000)
    assert pool.events[0][:2] == ("refused", "expect_mismatch")


def test_custom_ignores_what_arrives_unasked():
    pool = RecordingPool("custom", expect="OK")
    conn = pool.connect()
    conn.dataReceived(b"220 banner\r\n")
    assert pool.events == [] and conn.buf == b""


# -- every profile, random bytes ----------------------------------------------------------------

@pytest.mark.parametrize("protocol", [p for p in PROTOCOLS if p not in ("line", "raw")])
def test_random_bytes_never_raise_and_stay_bounded(protocol: str):
    rng = random.Random(14)
    for _ in range(200):
        pool = RecordingPool(protocol, max_reply=2048)
        conn = pool.connect()
        if rng.random() < 0.5:
            conn.state = OPEN
            conn.sent_at = 1.0
        for _ in range(20):
            if conn.state == CLOSING:
                break
            conn.dataReceived(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
            assert len(conn.buf) <= 2048
        assert len(pool.events) <= 3


def test_profile_options_cross_the_wire():
    options = ProfileOptions(protocol="http", host="h:1", path="/x", headers=(("A", "b"),), user="u")
    assert ProfileOptions.from_wire(options.to_wire()) == options
    assert attrs.evolve(options, protocol="mqtt").protocol == "mqtt"
