"""TLS test helpers over real loopback sockets: connscale's ping server with `server.tls`, a
pool of its TLS clients, settings that trust the test's CA, and the handshakes counted as the hub
reads them. Shared by tests/test_tls.py and tests/test_tls_nginx.py (the `pki` fixture is in
tests/conftest.py)."""

from __future__ import annotations

from typing import Any

from connscale.config.tls import ClientTLSSettings, ServerTLSSettings
from connscale.metrics.buckets import RttBuckets
from connscale.metrics.counters import Counters
from connscale.net.pool import ConnectionPool, PoolSettings
from connscale.net.routes import Route
from connscale.net.server import PingServerFactory, bind_sockets, serve
from tests.support.certs import Pki


def tls_server(reactor: Any, tls: ServerTLSSettings | None, framing: str = "line") -> tuple[Counters, int]:
    counters = Counters()
    sock = bind_sockets("127.0.0.1", [0], 1024)[0]
    port = sock.getsockname()[1]
    serve(reactor, [sock], PingServerFactory(framing, counters), tls)
    return counters, port


def client(reactor: Any, port: int, tls: ClientTLSSettings | None, **settings: Any) -> ConnectionPool:
    base = {"interval": 0.1, "timeout": 2.0, "rate": 2000.0, "replace": False}
    if tls is not None:
        base["tls"] = tls
    return ConnectionPool(reactor, reactor, PoolSettings(**{**base, **settings}), [Route(None, "127.0.0.1", port, 1000)])


def trusting(pki: Pki, **kw: Any) -> ClientTLSSettings:
    return ClientTLSSettings(enabled=True, ca_file=pki.ca_file, **kw)


def handshakes(counters: Counters) -> int:
    """Handshakes in the snapshot's histogram (what crosses to the hub), as the hub reads it."""
    buckets = RttBuckets()
    snap = counters.snapshot()
    if snap.handshake:
        buckets.add_encoded(snap.handshake)
    return buckets.total()
