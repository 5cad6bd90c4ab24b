"""connscale's TLS client against nginx's TLS (its stream proxy in front of a plain ping server).

Every ping crosses a TLS session nginx terminates: the handshake, SNI, verification against
the test's CA, session resumption with nginx's own tickets, and a plain-text client refused.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import servers
from tests.support.certs import Pki
from tests.support.loop import reactor, spin  # noqa: F401  (fixture)
from tests.support.tls import client, handshakes, tls_server, trusting

pytestmark = pytest.mark.skipif(servers.nginx_tls_missing() is not None, reason=servers.nginx_tls_missing() or "")


def test_pings_cross_nginxs_tls_and_a_reconnect_resumes_its_session(reactor, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    backend, backend_port = tls_server(reactor, None)
    cert, key = pki.issue("nginx", names=("localhost", "127.0.0.1"))
    with servers.nginx_tls_proxy(tmp_path, cert, key, backend_port) as proxy:
        pool = client(reactor, proxy.port, trusting(pki, server_name="localhost"), interval=0.2)
        pool.start(20)
        spin(reactor, lambda: pool.established == 20 and all(c.answered for c in pool._live()),
             what="every connection's first pong through nginx")
        assert pool.counters.failures == {} and backend.open == 20 and handshakes(pool.counters) == 20
        pool.stop(20)
        spin(reactor, lambda: pool.established == 0 and backend.open == 0)
        pool.start(20)
        spin(reactor, lambda: pool.established == 20 and pool.counters.pongs >= 60)
        # nginx's session tickets, offered back by the reconnects and taken.
        assert pool.counters.resumed == 20 and all(c.transport.obj.session_reused for c in pool._live())
        assert pool.counters.failures == {}


def test_nginx_with_a_certificate_from_an_unknown_ca_is_named(reactor, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    _, backend_port = tls_server(reactor, None)
    cert, key = pki.issue("rogue", rogue=True)
    with servers.nginx_tls_proxy(tmp_path, cert, key, backend_port) as proxy:
        pool = client(reactor, proxy.port, trusting(pki))
        pool.start(3)
        spin(reactor, lambda: sum(pool.counters.failures.values()) == 3)
        assert pool.counters.failures == {("connect", "tls_unknown_ca"): 3}


def test_a_plain_client_of_nginxs_tls_is_named_not_left_hanging(reactor, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    _, backend_port = tls_server(reactor, None)
    cert, key = pki.issue("nginx")
    with servers.nginx_tls_proxy(tmp_path, cert, key, backend_port) as proxy:
        pool = client(reactor, proxy.port, None, interval=0.05, timeout=2.0)
        pool.start(3)
        spin(reactor, lambda: sum(pool.counters.failures.values()) == 3, timeout=20)
        # nginx reads "Ping\n" as a broken ClientHello and closes: the first ping goes unanswered.
        assert pool.counters.failures == {("first_ping", "closed_by_peer"): 3}
