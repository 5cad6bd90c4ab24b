#!/usr/bin/env python3
"""bench/ws_cost.py: a WebSocket client connection's cost, connscale's profile against autobahn's protocol.

    python bench/ws_cost.py [--connections 10000] [--round-trips 5]

Both sides get the same in-memory transport (a `write` that keeps nothing), the same
server answers (a 101 with the right Sec-WebSocket-Accept, then a pong frame echoing each
ping's payload), so what differs is the protocol object alone:

  bytes per connection   Python heap held per upgraded connection (tracemalloc), N at once
  µs per round trip      CPU to build a ping frame and parse its pong, over N x round-trips
  µs per handshake       CPU to write the upgrade request and check the 101

This is what decided the `websocket` profile (docs/design.md): the figures are printed, and
the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import json
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class NullTransport:
    """Keeps only the last write (the request or frame the server must answer)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = b""

    def write(self, data: bytes) -> None:
        self.last = data

    def writeSequence(self, seq) -> None:  # type: ignore[no-untyped-def]
        self.last = b"".join(seq)

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass

    def getPeer(self):  # type: ignore[no-untyped-def]
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 9000)

    def getHost(self):  # type: ignore[no-untyped-def]
        return self.getPeer()

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


def answer_upgrade(request: bytes) -> bytes:
    key = request.split(b"Sec-WebSocket-Key: ")[1].split(b"\r\n")[0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def pong_for(frame: bytes) -> bytes:
    """The server's pong (unmasked) for a client's masked ping frame."""
    n = frame[1] & 0x7F
    mask, body = frame[2:6], frame[6:6 + n]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    return bytes((0x8A, n)) + payload


# -- connscale ------------------------------------------------------------------------------------

class ProfilePool:
    """The pool's hooks a profile calls, counting and nothing else."""

    framing = "line"
    reply = b""

    def __init__(self) -> None:
        from connscale.config.target import ProfileOptions
        from connscale.metrics.counters import Counters
        from connscale.net.profiles import make_profile

        self.profile = make_profile(ProfileOptions(protocol="websocket", host="127.0.0.1:9000"), 5.0, 1.0)
        self.counters = Counters()
        self.opened = self.pongs = 0
        self._serial = 0

    def next_serial(self) -> int:
        self._serial += 1
        return self._serial

    def session_open(self, conn) -> None:  # type: ignore[no-untyped-def]
        conn.state = conn.OPEN
        self.opened += 1

    def pong(self, conn) -> None:  # type: ignore[no-untyped-def]
        self.pongs += 1

    def refused(self, conn, cause, words) -> None:  # type: ignore[no-untyped-def]
        raise AssertionError(f"refused: {cause} {words!r}")

    def bad_reply(self, conn, kind) -> None:  # type: ignore[no-untyped-def]
        raise AssertionError(f"bad reply: {kind}")


def connscale_side(n: int, round_trips: int) -> dict[str, float]:
    pool = ProfilePool()

    def build() -> list:  # type: ignore[type-arg]
        conns = []
        for _ in range(n):
            conn = pool.profile.connection(pool, 0)
            conn.transport = NullTransport()
            conn.state = conn.HANDSHAKING
            conn.transport.write(pool.profile.opening(conn, "127.0.0.1", 9000))
            conn.dataReceived(answer_upgrade(conn.transport.last))
            conns.append(conn)
        return conns

    held = heap_per_connection(build, n)
    t0 = time.process_time()
    conns = build()
    handshake = time.process_time() - t0
    assert pool.opened == 2 * n
    t0 = time.process_time()
    for _ in range(round_trips):
        for conn in conns:
            frame = pool.profile.ping_for(conn)
            conn.dataReceived(pong_for(frame))
    rtt = time.process_time() - t0
    assert pool.pongs == n * round_trips
    return {"bytes_per_conn": held, "us_per_round_trip": rtt / (n * round_trips) * 1e6,
            "us_per_handshake": handshake / n * 1e6}


def heap_per_connection(build, n: int) -> float:  # type: ignore[no-untyped-def]
    """Heap bytes `build()`'s n connections hold (traced apart from the timed runs: tracing slows allocation)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    conns = build()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del conns
    gc.collect()
    return held / n


# -- autobahn -------------------------------------------------------------------------------------

def autobahn_side(n: int, round_trips: int) -> dict[str, float]:
    import txaio

    txaio.use_twisted()
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol

    counts = {"open": 0, "pong": 0}

    class Client(WebSocketClientProtocol):
        def onOpen(self) -> None:
            counts["open"] += 1

        def onPong(self, payload: bytes) -> None:
            counts["pong"] += 1

    factory = WebSocketClientFactory("ws://127.0.0.1:9000/")
    factory.protocol = Client
    # What a keepalive load needs and no more: no auto-ping of its own, no UTF-8 checks.
    factory.setProtocolOptions(autoPingInterval=0, utf8validateIncoming=False, openHandshakeTimeout=0,
                               closeHandshakeTimeout=0)

    def build() -> list:  # type: ignore[type-arg]
        conns = []
        for _ in range(n):
            proto = factory.buildProtocol(None)
            transport = NullTransport()
            proto.makeConnection(transport)
            proto.dataReceived(answer_upgrade(transport.last))
            conns.append((proto, transport))
        return conns

    held = heap_per_connection(build, n)
    t0 = time.process_time()
    conns = build()
    handshake = time.process_time() - t0
    assert counts["open"] == 2 * n, counts
    t0 = time.process_time()
    for i in range(round_trips):
        payload = i.to_bytes(4, "big")
        for proto, transport in conns:
            proto.sendPing(payload)
            proto.dataReceived(pong_for(transport.last))
    rtt = time.process_time() - t0
    assert counts["pong"] == n * round_trips, counts
    return {"bytes_per_conn": held, "us_per_round_trip": rtt / (n * round_trips) * 1e6,
            "us_per_handshake": handshake / n * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=10_000)
    ap.add_argument("--round-trips", type=int, default=5)
    args = ap.parse_args()
    out = {"connections": args.connections}
    for name, side in (("connscale", connscale_side), ("autobahn", autobahn_side)):
        figures = side(args.connections, args.round_trips)
        out[name] = figures
        print(f"{name:10s} {figures['bytes_per_conn']:8.0f} B/connection  {figures['us_per_round_trip']:6.1f} µs/round "
              f"trip  {figures['us_per_handshake']:6.1f} µs/handshake", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
