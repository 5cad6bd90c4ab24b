"""config.endpoints: the one answer to "what does this endpoint bind" and "is it loopback",
asked by the secret (may a hub make its own?), the console and /metrics (warn when exposed)
and every client that dials the hub."""

from __future__ import annotations

import pytest

from connscale.config.endpoints import (
    EndpointError,
    binds_loopback,
    dial_address,
    endpoint_address,
    is_loopback_host,
)
from connscale.control.metrics_listen import metrics_endpoint


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp:8790", False),  # no interface: every interface
        ("tcp:port=8790", False),
        ("ssl:8790:privateKey=key.pem", False),
        ("tcp6:8790", False),  # tcp6 binds :: without one
        ("tcp:8790:interface=127.0.0.1", True),
        ("tcp:port=8790:interface=127.0.0.1", True),
        ("tcp:8790:127.0.0.1", True),  # tcp takes the interface positionally too
        ("tcp:0:127.0.0.5", True),
        ("tcp:8790:backlog=5:interface=127.1.2.3", True),
        ("tcp:8790:interface=127.0.0.53", True),
        (r"tcp:8790:interface=\:\:1", True),
        (r"tcp6:8790:interface=\:\:1", True),
        (r"tcp6:8790:50:interface=\:\:1", True),  # tcp6's second positional is its backlog
        (r"tcp:8790:interface=\:\:ffff\:127.0.0.1", True),  # IPv4-mapped: judged as its IPv4 address
        ("tcp:8790:interface=localhost", True),  # RFC 6761: localhost resolves to loopback
        ("tcp:8790:interface=LOCALHOST.", True),
        ("tcp:8790:interface=0.0.0.0", False),
        (r"tcp:8790:interface=\:\:", False),
        ("tcp:8790:interface=192.168.1.10", False),
        ("tcp:8790:interface=example.com", False),  # a name we cannot prove is loopback
        ("tcp:8790:interface=localhost.example.com", False),
        ("unix:/run/connscale.sock", True),  # a unix socket is local by construction
        ("unix:path=/tmp/x.sock:mode=600", True),
        ("ssl:8790:privateKey=key.pem:interface=127.0.0.1", True),
        ("ssl:8790:127.0.0.1", False),  # ssl's second positional is its key file, not an interface
    ],
)
def test_binds_loopback(endpoint: str, loopback: bool) -> None:
    assert binds_loopback(endpoint) is loopback


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.255.0.1", True), ("::1", True), ("::1%lo", True), ("::ffff:127.0.0.1", True),
     ("localhost", True), ("", False), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
     ("::ffff:10.0.0.1", False), ("myhost", False)],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    "endpoint, address",
    [("tcp:8790", ("", 8790)), ("tcp:port=0", ("", 0)), ("tcp:8790:10.1.2.3", ("10.1.2.3", 8790)),
     (r"tcp:8790:interface=\:\:1", ("::1", 8790)), ("tcp6:8790", ("::", 8790)),
     ("ssl:8443:privateKey=k.pem:interface=127.0.0.2", ("127.0.0.2", 8443)), ("unix:/x.sock", None)],
)
def test_endpoint_address(endpoint: str, address: tuple[str, int] | None) -> None:
    assert endpoint_address(endpoint) == address


@pytest.mark.parametrize("endpoint", ["tcp:", "tcp:http", "tcp:70000", "unix:", "udp:53", "tcp:port=-1"])
def test_endpoint_address_refuses_in_one_line(endpoint: str) -> None:
    with pytest.raises(EndpointError) as info:
        endpoint_address(endpoint)
    assert "\n" not in str(info.value) and repr(endpoint) in str(info.value)


@pytest.mark.parametrize(
    "endpoint, address",
    [("tcp:8790", ("127.0.0.1", 8790)), ("tcp:8790:interface=0.0.0.0", ("127.0.0.1", 8790)),
     (r"tcp:8790:interface=\:\:", ("::1", 8790)), ("tcp:8790:interface=127.0.0.9", ("127.0.0.9", 8790)),
     ("tcp:8790:interface=10.0.0.5", ("10.0.0.5", 8790)), ("unix:/x.sock", None)],
)
def test_dial_address(endpoint: str, address: tuple[str, int] | None) -> None:
    assert dial_address(endpoint) == address


def test_metrics_default_to_loopback_whatever_the_spelling() -> None:
    # /metrics carries the run's addresses and no login protects it: no interface means loopback here.
    assert metrics_endpoint("tcp:9108") == ("tcp:9108:interface=127.0.0.1", False)
    assert metrics_endpoint("tcp:port=9108") == ("tcp:port=9108:interface=127.0.0.1", False)
    # A positional interface is an interface (appending interface= would name it twice).
    assert metrics_endpoint("tcp:9108:0.0.0.0") == ("tcp:9108:0.0.0.0", True)
    assert metrics_endpoint("tcp:9108:localhost") == ("tcp:9108:localhost", False)
    assert metrics_endpoint("ssl:9108:privateKey=k.pem") == ("ssl:9108:privateKey=k.pem", True)
