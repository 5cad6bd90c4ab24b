"""Server protocols, both framings, driven through StringTransport."""

from twisted.internet import error
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from connscale.metrics.counters import Counters
from connscale.net.server import PingServerFactory
from connscale.net.wire import FLOOD_MESSAGES


def connect(framing="line", max_line=1024):
    counters = Counters()
    factory = PingServerFactory(framing, counters, max_line)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, counters


def lose(proto, exc=error.ConnectionDone):
    proto.connectionLost(Failure(exc()))


def test_line_ping_gets_pong_with_same_ending():
    proto, t, c = connect()
    proto.dataReceived(b"Ping\n")
    assert t.value() == b"Pong\n"
    t.clear()
    proto.dataReceived(b"Ping\r\n")
    assert t.value() == b"Pong\r\n"
    assert (c.pings, c.pongs, c.open) == (2, 2, 1)


def test_line_partial_reads_are_buffered():
    proto, t, c = connect()
    for b in b"Pi", b"n", b"g", b"\nPing", b"\n":
        proto.dataReceived(b)
    assert t.value() == b"Pong\nPong\n"
    assert not t.disconnecting


def test_unknown_line_is_counted_and_closes_cleanly():
    proto, t, c = connect()
    proto.dataReceived(b"Ping\nHello\nPing\n")
    assert t.value() == b"Pong\n"  # nothing answered after the violation
    assert t.disconnecting
    assert c.protocol == {"unknown_line": 1}
    assert c.failures == {("steady", "protocol_error"): 1}
    lose(proto)
    assert (c.open, c.closed) == (0, 1)
    assert c.failures == {("steady", "protocol_error"): 1}  # not counted twice


def test_long_line_is_counted():
    proto, t, c = connect(max_line=64)
    proto.dataReceived(b"x" * 65)
    assert t.disconnecting
    assert c.protocol == {"line_too_long": 1}
    # Nothing valid came before it: the connection never got past its first ping.
    assert c.failures == {("first_ping", "protocol_error"): 1}


def test_one_mib_line_in_pieces():
    proto, t, c = connect()
    for _ in range(256):
        proto.dataReceived(b"y" * 4096)
    assert c.protocol == {"line_too_long": 1}
    assert c.failures[("first_ping", "protocol_error")] == 1


def test_flood_is_counted():
    proto, t, c = connect()
    proto.dataReceived(b"Ping\n" * (FLOOD_MESSAGES + 1))
    assert t.value() == b""
    assert c.protocol == {"flood": 1}


def test_raw_framing_round_trip_and_partial_reads():
    proto, t, c = connect("raw")
    proto.dataReceived(b"Pi")
    assert t.value() == b""
    proto.dataReceived(b"ngPingP")
    assert t.value() == b"PongPong"
    proto.dataReceived(b"ing")
    assert t.value() == b"PongPongPong"
    assert c.pings == 3 and not c.protocol


def test_raw_garbage_is_a_violation():
    proto, t, c = connect("raw")
    proto.dataReceived(b"Pixx")
    assert t.disconnecting and c.protocol == {"unknown_line": 1}
    proto2, t2, c2 = connect("raw")
    proto2.dataReceived(b"Q")
    assert t2.disconnecting


def test_reset_counts_as_failure_clean_close_does_not():
    proto, t, c = connect()
    proto.dataReceived(b"Ping\n")
    lose(proto, error.ConnectionLost)
    assert c.failures == {("steady", "ECONNRESET"): 1}
    proto, t, c = connect()
    lose(proto)
    assert c.failures == {}
    assert (c.opened, c.closed) == (1, 1)
