"""The server's own words in the walls: each cap named with its fix, the server quoted (pure, fake windows)."""

from __future__ import annotations

from connscale.diagnose.incidents import snapshot
from connscale.diagnose.verdict import explain
from connscale.diagnose.walls import name_wall
from connscale.diagnose.window import Context, Window
from connscale.metrics.records import Stats
from connscale.metrics.snapshot import Snapshot


def wall(key: str, protocol: str, said: dict[str, str] | None = None, open_: int = 500, **failures: int):
    w = Window(open=open_, failures={key: 10, **failures}, said=said or {})
    return name_wall(key, w, Context(protocol=protocol, own_server=False))


def text(f) -> str:
    return " ".join([f.headline, *f.evidence, *f.fix])


def test_redis_maxclients_quoted_with_both_fixes():
    f = wall("connect:redis_maxclients", "redis", {"redis_maxclients": "-ERR max number of clients reached"})
    assert f.wall == "server_cap" and f.side == "server"
    assert '"-ERR max number of clients reached"' in f.headline
    assert "CONFIG SET maxclients" in text(f) and "LimitNOFILE" in text(f)


def test_nginx_is_named_only_when_it_said_it_was_nginx():
    f = wall("steady:closed_by_peer", "http", {"server": "Server: nginx/1.22.1"})
    assert f.wall == "server_cap" and "worker_connections" in text(f) and "worker_rlimit_nofile" in text(f)
    assert "Server: nginx/1.22.1" in text(f)
    other = wall("steady:closed_by_peer", "http", {"server": "Server: Apache"})
    assert "worker_connections" not in text(other)


def test_broker_refusals_by_connack_code():
    f = wall("connect:connack_3", "mqtt", {"connack_3": "CONNACK 3 (connection refused: server unavailable)"})
    assert f.wall == "server_cap" and "max_connections" in text(f) and "CONNACK 3" in f.headline
    f = wall("connect:connack_4", "mqtt", {"connack_4": "CONNACK 4 (connection refused: bad user name or password)"})
    assert f.wall == "server_refused" and "client.password" in text(f)


def test_a_broker_closing_before_connack_is_its_cap():
    f = wall("connect:closed_by_peer", "mqtt")
    assert f.wall == "server_cap" and "max_connections" in text(f)


def test_websocket_503_at_the_upgrade():
    f = wall("connect:http_503", "websocket", {"http_503": "HTTP/1.1 503 Service Unavailable"})
    assert f.wall == "server_cap" and '"HTTP/1.1 503 Service Unavailable"' in f.headline
    assert "maxConnections" in text(f)


def test_a_server_that_never_opens_a_session_may_speak_tls():
    f = wall("connect:closed_by_peer", "redis", open_=0)
    assert f.wall == "protocol" and "may expect TLS" in f.headline and "rediss://" in text(f)


def test_tls_records_and_foreign_replies():
    f = wall("connect:protocol_error", "redis", {"tls_reply": "a TLS record (bytes 15 03 03) where redis was expected"})
    assert f.wall == "protocol" and "speaks TLS" in f.headline
    f = wall("connect:protocol_error", "redis", {"unexpected_reply": "HTTP/1.1 400 Bad Request"})
    assert "does not speak redis" in f.headline and "HTTP/1.1 400 Bad Request" in text(f)


def test_line_keeps_its_own_walls():
    assert wall("first_ping:protocol_error", "line").fix[0].startswith("use the same framing")
    assert wall("connect:ECONNREFUSED", "redis").wall == "server_down"


def test_the_explanation_quotes_the_server():
    f = wall("connect:redis_maxclients", "redis", {"redis_maxclients": "-ERR max number of clients reached"})
    w = Window(elapsed_s=3.0, open=300, failures={"connect:redis_maxclients": 10})
    incident = snapshot("failures", f, w, Stats(elapsed_s=3.0, client=Snapshot(), server=Snapshot()))
    out = explain("failed", 800, peak_open=300, reason="failures exceeded", incidents=[incident])
    assert out.wall == "server_cap"
    assert out.headline.startswith('stopped at 300 of 800 connections: Redis refused new connections at its '
                                      'maxclients: "-ERR max number of clients reached"')


def test_sessions_that_never_open_in_time_with_the_kernel_counting_overflows():
    w = Window(open=19_992, failures={"connect:handshake_timeout": 8}, kernel_delta={"listen_overflows": 40})
    f = name_wall("connect:handshake_timeout", w, Context(protocol="http", own_server=False))
    assert f.wall == "server_starved" and "ListenOverflows +40" in text(f) and "backlog=65535" in f.fix[0]
    f = name_wall("connect:handshake_timeout", Window(failures={"connect:handshake_timeout": 8}),
                  Context(protocol="http", own_server=False))
    assert "backlog" not in text(f)
