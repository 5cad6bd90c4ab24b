"""TLS on both ends (net/tls.py), through real handshakes on loopback.

Every certificate is made by the test (tests/support/certs.py) in its tmp_path. A
server is connscale's own (`serve` with `server.tls`) unless the case needs another
kind of peer (silent, plain text, a client certificate required).
"""

from __future__ import annotations

import ssl
from typing import Any

import attrs
import pytest
from twisted.internet.protocol import Factory, Protocol

from connscale.config.tls import ClientTLSSettings
from connscale.metrics.counters import TLS_CAUSES, Counters
from connscale.net.server import PingServerFactory, bind_sockets, listen_on, serve, tls_factory
from connscale.net.tls import TLSLayer
from tests.support.certs import Pki
from tests.support.loop import reactor, spin, turns  # noqa: F401  (fixture)
from tests.support.tls import client, handshakes, tls_server, trusting


@pytest.mark.parametrize("framing", ["line", "raw"])
def test_line_and_raw_over_tls_hold_and_every_handshake_is_timed(reactor, pki, framing) -> None:  # noqa: F811
    server, port = tls_server(reactor, pki.server(), framing)
    pool = client(reactor, port, trusting(pki), framing=framing)
    pool.start(20)
    spin(reactor, lambda: pool.counters.pongs >= 60, what="pongs over TLS")
    assert pool.established == 20 and server.open == 20
    assert pool.counters.failures == {} and server.failures == {}
    assert handshakes(pool.counters) == 20
    assert all(isinstance(c.transport, TLSLayer) for c in pool._live())
    pool.close_all()
    spin(reactor, lambda: server.open == 0, what="the server to see every close")
    # close_notify, then FIN: the server saw orderly closes, not failures.
    assert server.failures == {}


def test_without_tls_the_dial_path_is_unchanged(reactor) -> None:  # noqa: F811
    server, port = tls_server(reactor, None)
    pool = client(reactor, port, None)
    pool.start(3)
    spin(reactor, lambda: pool.counters.pongs >= 3)
    assert pool.dialer.tls is None and not any(isinstance(c.transport, TLSLayer) for c in pool._live())
    assert handshakes(pool.counters) == 0


@pytest.mark.parametrize(("kind", "cause"), [
    ({"names": ("other.example",)}, "tls_hostname_mismatch"),
    ({"rogue": True}, "tls_unknown_ca"),
    ({"days": (-30, -1)}, "tls_cert_expired"),
    ({"days": (1, 30)}, "tls_cert_not_yet_valid"),
])
def test_a_certificate_the_client_refuses_fails_the_connect_by_its_cause(reactor, pki, kind, cause) -> None:  # noqa: F811
    server, port = tls_server(reactor, pki.server(**kind))
    pool = client(reactor, port, trusting(pki))
    pool.start(3)
    spin(reactor, lambda: sum(pool.counters.failures.values()) == 3 and sum(server.failures.values()) == 3,
         what="three refused handshakes, on both sides")
    assert pool.counters.failures == {("connect", cause): 3}
    assert pool.established == 0 and pool.connecting == 0 and server.open == 0
    # The client's alert reached the server, which names it from its side.
    assert server.failures == {("connect", "tls_cert_rejected"): 3}


def test_verify_off_accepts_any_certificate(reactor, pki) -> None:  # noqa: F811
    server, port = tls_server(reactor, pki.server(rogue=True, names=("other.example",)))
    pool = client(reactor, port, ClientTLSSettings(enabled=True, verify=False))
    pool.start(2)
    spin(reactor, lambda: pool.counters.pongs >= 2)
    assert pool.counters.failures == {}


def test_server_name_is_sent_as_sni_and_checked(reactor, pki) -> None:  # noqa: F811
    counters = Counters()
    factory = tls_factory(reactor, pki.server(names=("ping.example",)), PingServerFactory("line", counters), counters)
    seen: list[str | None] = []
    factory.tls.context.sni_callback = lambda obj, name, ctx: seen.append(name)
    sock = bind_sockets("127.0.0.1", [0], 64)[0]
    listen_on(reactor, sock, factory, counters.fail)
    port = int(sock.getsockname()[1])
    pool = client(reactor, port, trusting(pki, server_name="ping.example"))
    pool.start(2)
    spin(reactor, lambda: pool.counters.pongs >= 2)
    assert pool.counters.failures == {} and seen == ["ping.example", "ping.example"]
    wrong = client(reactor, port, trusting(pki, server_name="pong.example"))
    wrong.start(1)
    spin(reactor, lambda: wrong.counters.failures)
    assert wrong.counters.failures == {("connect", "tls_hostname_mismatch"): 1}
    # An address is checked against the certificate's IP addresses and is never sent as SNI.
    by_address = client(reactor, port, trusting(pki))
    by_address.start(1)
    spin(reactor, lambda: by_address.counters.failures)
    assert by_address.counters.failures == {("connect", "tls_hostname_mismatch"): 1}
    assert seen[2:] == ["pong.example", None]


def test_no_common_version_is_named(reactor, pki) -> None:  # noqa: F811
    # A server that stops at TLS 1.2, a client that starts at 1.3.
    counters = Counters()
    factory = tls_factory(reactor, pki.server(), PingServerFactory("line", counters), counters)
    factory.tls.context.maximum_version = ssl.TLSVersion.TLSv1_2
    sock = bind_sockets("127.0.0.1", [0], 64)[0]
    listen_on(reactor, sock, factory, counters.fail)
    pool = client(reactor, sock.getsockname()[1], trusting(pki))
    pool.dialer.tls.context.minimum_version = ssl.TLSVersion.TLSv1_3
    pool.start(2)
    spin(reactor, lambda: sum(pool.counters.failures.values()) == 2 and sum(counters.failures.values()) == 2)
    assert pool.counters.failures == {("connect", "tls_protocol_version"): 2}
    assert counters.failures == {("connect", "tls_protocol_version"): 2}


class Silent(Protocol):
    """Accepts and never says a word."""


class Banner(Protocol):
    """A plain-text server: greets every connection with a line."""

    def connectionMade(self) -> None:
        self.transport.write(b"220 hello, I speak plain text\r\n")


def plain_server(reactor: Any, protocol: type[Protocol]) -> int:
    sock = bind_sockets("127.0.0.1", [0], 64)[0]
    listen_on(reactor, sock, Factory.forProtocol(protocol))
    return int(sock.getsockname()[1])


def test_a_server_that_never_answers_the_handshake_times_out(reactor, pki) -> None:  # noqa: F811
    port = plain_server(reactor, Silent)
    pool = client(reactor, port, trusting(pki, handshake_timeout=0.3))
    pool.start(2)
    spin(reactor, lambda: sum(pool.counters.failures.values()) == 2, what="the handshake deadline")
    assert pool.counters.failures == {("connect", "tls_handshake_timeout"): 2}


def test_a_plain_text_server_is_named_not_waited_for(reactor, pki) -> None:  # noqa: F811
    port = plain_server(reactor, Banner)
    pool = client(reactor, port, trusting(pki))
    pool.start(2)
    spin(reactor, lambda: sum(pool.counters.failures.values()) == 2)
    assert pool.counters.failures == {("connect", "tls_peer_not_tls"): 2}


def test_connscale_plain_server_spoken_to_in_tls_fails_fast_by_a_tls_cause(reactor, pki) -> None:  # noqa: F811
    server, port = tls_server(reactor, None)
    pool = client(reactor, port, trusting(pki, handshake_timeout=1.0))
    pool.start(4)
    spin(reactor, lambda: sum(pool.counters.failures.values()) == 4)
    # The line server closes on a ClientHello holding a newline, or waits for one: either
    # way a named TLS cause, within the handshake's deadline.
    (key,) = pool.counters.failures
    assert key[0] == "connect" and key[1] in ("tls_closed_in_handshake", "tls_handshake_timeout")
    assert sum(pool.counters.failures.values()) == 4


def test_a_plain_client_of_a_tls_server_is_named_on_both_sides(reactor, pki) -> None:  # noqa: F811
    server, port = tls_server(reactor, pki.server())
    pool = client(reactor, port, None, interval=0.05)
    pool.start(3)
    spin(reactor, lambda: sum(pool.counters.failures.values()) == 3 and sum(server.failures.values()) == 3,
         what="both sides to count the mismatch")
    # "Ping\n" is not a TLS record: the server names it and closes (OpenSSL sends no alert
    # to what does not look like TLS), so the client sees its first ping go unanswered.
    assert server.failures == {("connect", "tls_peer_not_tls"): 3}
    assert pool.counters.failures == {("first_ping", "closed_by_peer"): 3}
    assert server.open == 0


def test_a_reconnect_resumes_its_routes_session(reactor, pki) -> None:  # noqa: F811
    server, port = tls_server(reactor, pki.server())
    pool = client(reactor, port, trusting(pki))
    pool.start(5)
    # A pong read means the session ticket (sent right after the handshake) was read too.
    spin(reactor, lambda: all(c.answered for c in pool._live()) and pool.established == 5)
    assert pool.counters.resumed == 0
    pool.stop(5)
    spin(reactor, lambda: pool.established == 0 and server.open == 0)
    pool.start(5)
    spin(reactor, lambda: pool.established == 5 and server.open == 5)
    layers = [c.transport for c in pool._live()]
    assert all(layer.obj.session_reused for layer in layers)
    assert pool.counters.resumed == 5 and server.resumed == 5
    assert handshakes(pool.counters) == 10
    # Each saved session is offered once: the next reconnects make new ones.
    assert sum(len(s) for s in pool.dialer.tls.sessions.values()) == 0


def test_resume_off_never_offers_a_session(reactor, pki) -> None:  # noqa: F811
    server, port = tls_server(reactor, pki.server())
    pool = client(reactor, port, trusting(pki, resume=False))
    pool.start(3)
    spin(reactor, lambda: all(c.answered for c in pool._live()) and pool.established == 3)
    pool.stop(3)
    spin(reactor, lambda: pool.established == 0)
    pool.start(3)
    spin(reactor, lambda: pool.established == 3)
    assert pool.counters.resumed == 0 and not any(c.transport.obj.session_reused for c in pool._live())


def client_cert_server(reactor: Any, pki: Pki) -> tuple[Counters, int]:
    """connscale's server, asking every client for a certificate signed by the test CA."""
    counters = Counters()
    factory = tls_factory(reactor, pki.server(), PingServerFactory("line", counters), counters)
    factory.tls.context.verify_mode = ssl.CERT_REQUIRED
    factory.tls.context.load_verify_locations(pki.ca_file)
    sock = bind_sockets("127.0.0.1", [0], 64)[0]
    listen_on(reactor, sock, factory, counters.fail)
    return counters, int(sock.getsockname()[1])


def test_a_client_certificate_is_presented(reactor, pki) -> None:  # noqa: F811
    server, port = client_cert_server(reactor, pki)
    cert, key = pki.issue("client", names=())
    pool = client(reactor, port, trusting(pki, cert=cert, key=key))
    pool.start(2)
    spin(reactor, lambda: pool.counters.pongs >= 2)
    assert pool.counters.failures == {} and server.failures == {}


def test_a_missing_client_certificate_is_named_on_both_sides(reactor, pki) -> None:  # noqa: F811
    server, port = client_cert_server(reactor, pki)
    pool = client(reactor, port, trusting(pki))
    pool.start(2)
    spin(reactor, lambda: sum(pool.counters.failures.values()) == 2 and sum(server.failures.values()) == 2)
    # TLS 1.3: the client's handshake is done before the server has judged its certificate,
    # so the refusal arrives as the connection's first read.
    assert {cause for _, cause in pool.counters.failures} == {"tls_cert_rejected"}
    assert server.failures == {("connect", "tls_cert_rejected"): 2}


def test_stopping_mid_handshake_counts_nothing_and_leaves_nothing(reactor, pki) -> None:  # noqa: F811
    port = plain_server(reactor, Silent)
    pool = client(reactor, port, trusting(pki))
    pool.start(3)
    spin(reactor, lambda: pool.connecting == 3 and all(
        getattr(c.transport.transport, "connecting", True) is False for c in pool._live()),
        what="TCP connected, handshakes waiting")
    assert pool.connecting == 3
    assert pool.stop(3) == 3
    spin(reactor, lambda: pool.connecting == 0 and not pool._conns)
    assert pool.counters.failures == {}


def test_over_twisted_transports_too(pki) -> None:
    """A reactor without epoll (or a server given by name) dials through Twisted's TCP."""
    from twisted.internet.selectreactor import SelectReactor

    r = SelectReactor()
    try:
        server, port = tls_server(r, pki.server())
        pool = client(r, port, trusting(pki))
        assert pool._loop is None
        pool.start(3)
        spin(r, lambda: pool.counters.pongs >= 6)
        assert server.open == 3 and pool.counters.failures == {}
        assert handshakes(pool.counters) == 3
        pool.stop(3)
        spin(r, lambda: server.open == 0 and pool.established == 0)
    finally:
        for call in r.getDelayedCalls():
            call.cancel()
        r.removeAll()


def test_a_refused_handshake_over_twisted_transports_is_counted_and_frees_its_route(pki) -> None:
    """Over Twisted's TCP a dial is a connector until it connects: a handshake refused after TCP
    connected fails the connect by its cause and leaves no connector or route load behind."""
    from twisted.internet.selectreactor import SelectReactor

    r = SelectReactor()
    try:
        server, port = tls_server(r, pki.server(rogue=True))
        pool = client(r, port, trusting(pki))
        assert pool._loop is None
        pool.start(3)
        spin(r, lambda: sum(pool.counters.failures.values()) == 3, what="three refused handshakes")
        assert pool.counters.failures == {("connect", "tls_unknown_ca"): 3}
        assert pool.dialer.connectors == {} and pool.spread.load == [0] and pool.connecting == 0
    finally:
        for call in r.getDelayedCalls():
            call.cancel()
        r.removeAll()


def test_every_cause_the_layer_names_is_in_the_bounded_set() -> None:
    from connscale.net import tls

    named = set(tls._VERIFY_CAUSES.values()) | set(tls._REASON_CAUSES.values())
    named |= {"tls_handshake_timeout", "tls_closed_in_handshake", "tls_error", "tls_cert_invalid"}
    assert named <= TLS_CAUSES
    assert attrs.has(ClientTLSSettings)


class Recording(PingServerFactory):
    """connscale's ping server, keeping every protocol it builds (to close them from the server side)."""

    def __init__(self, counters: Counters) -> None:
        super().__init__("line", counters)
        self.built: list[Any] = []

    def buildProtocol(self, addr: object):  # type: ignore[no-untyped-def]
        protocol = super().buildProtocol(addr)
        self.built.append(protocol)
        return protocol


def test_a_connection_the_server_drops_is_replaced_and_its_replacement_resumes(reactor, pki) -> None:  # noqa: F811
    counters = Counters()
    factory = Recording(counters)
    sock = bind_sockets("127.0.0.1", [0], 64)[0]
    serve(reactor, [sock], factory, pki.server())
    pool = client(reactor, sock.getsockname()[1], trusting(pki), replace=True)
    pool.start(4)
    spin(reactor, lambda: pool.established == 4 and all(c.answered for c in pool._live()))
    for protocol in factory.built[:2]:
        protocol.transport.loseConnection()  # the server ends two of them (close_notify, FIN)
    spin(reactor, lambda: pool.counters.closed == 2 and pool.established == 4, what="two replacements")
    assert pool.counters.failures == {("steady", "closed_by_peer"): 2}
    # The replacements resumed the sessions the dropped connections left on their routes.
    assert pool.counters.resumed == 2 and handshakes(pool.counters) == 6
