"""The server's own words: walls a protocol profile names (client.protocol other than line/raw).

A profile (net/profiles) counts what the server said or did as a failure cause
("redis_maxclients", "connack_3", "http_503", ...) and keeps a sample of its words
(`Window.said`). `server_words` names each server's cap with its fix (Redis's
maxclients, nginx's worker_connections, a broker's CONNACK refusal or connection
cap, a WebSocket server's 503 at the upgrade), quoting the server; `wrong_server`
names replies that are another protocol (or TLS spoken to in plain text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from connscale.diagnose.window import PEER_CLOSED, Context, Failure, Finding, Window, count_line, kernel_line
from connscale.metrics.counters import SERVER_HEADER


def _quote(w: Window, cause: str) -> str:
    words = w.said.get(cause)
    return f'"{words}"' if words else ""


def _server_is(w: Window, name: str) -> bool:
    return name in w.said.get(SERVER_HEADER, "").lower()


def _cap(key: str, w: Window, headline: str, words: str, fixes: Sequence[str]) -> Finding:
    evidence = [count_line(w, key)]
    if words:
        evidence.append(f"the server said: {words}")
    server = w.said.get(SERVER_HEADER)
    if server:
        evidence.append(f"it identified itself as {server}")
    return Finding("server_cap", "server", headline + (f": {words}" if words else ""), tuple(evidence), tuple(fixes))


#: A broker's CONNACK refusal code -> its fix.
_CONNACK_FIXES: Mapping[str, tuple[str, ...]] = {
    "3": ("the broker is at its connection cap or refuses service: raise it (mosquitto: max_connections "
          "in mosquitto.conf, -1 for no cap; and its open-file limit, LimitNOFILE=), or it is shutting down",),
    "4": ("give the broker's user and password: client.user and client.password, or mqtt://USER:PASS@HOST",),
    "5": ("the broker's ACL or authentication does not let this client in: client.user/client.password, "
          "or the broker's allow_anonymous / acl_file",),
    "2": ("the broker rejects the client id: client.mqtt.client_prefix (ids are the prefix, the worker's "
          "pid and a number; keep the prefix short for brokers that allow 23 characters)",),
    "1": ("the broker does not speak MQTT 3.1.1 (protocol level 4): check its version or listener",),
}

#: A refusal a profile names -> its fix (the HTTP status families are worded in `_refused`).
_REFUSED_FIXES: Mapping[str, str] = {
    "redis_noauth": "give Redis's password: redis://:PASSWORD@HOST (or USER:PASSWORD@ for an ACL user), "
                    "or client.password",
    "redis_loading": "Redis is loading its dataset: start the run once it is up",
    "http_connection_close": "the server will not keep connections alive: enable keep-alive "
                             "(nginx: keepalive_timeout > client.interval, keepalive_requests high "
                             "enough for a run's pings)",
    "ws_bad_accept": "the server's handshake answer is not RFC 6455's (a proxy in between, or not a "
                     "WebSocket endpoint): check client.url's path",
    "expect_mismatch": "client.custom.expect or expect_regex does not match what the server answers",
}

def _redis_maxclients(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if f.cause != "redis_maxclients":
        return None
    return _cap(f.key, w, "Redis refused new connections at its maxclients", _quote(w, f.cause), (
        "raise Redis's maxclients: `maxclients 20000` in redis.conf, or `redis-cli CONFIG SET maxclients 20000` "
        "on the running server",
        "Redis lowers maxclients to its open-file limit minus 32 at start: raise the limit it starts with "
        "(ulimit -n 65536 before redis-server, LimitNOFILE=65536 in its systemd unit) and restart it",
    ))


def _connack(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if not f.cause.startswith("connack_"):
        return None
    quote = _quote(w, f.cause)
    code = f.cause.rsplit("_", 1)[-1]
    fixes = _CONNACK_FIXES.get(code, ("see the broker's log for the refusal",))
    if code == "3":
        return _cap(f.key, w, "the MQTT broker refused new connections (CONNACK 3, server unavailable)", quote,
                    fixes)
    return _said_no(f, w, f"the MQTT broker refused the CONNECT: {quote or f.cause}", quote, fixes)


def _websocket_503(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if not (f.cause == "http_503" and f.phase == "connect" and ctx.protocol == "websocket"):
        return None
    return _cap(f.key, w, "the WebSocket server refused the upgrade with 503 (at its own connection limit)",
                _quote(w, f.cause), (
                    "raise the WebSocket server's own connection limit (autobahn: maxConnections; a proxy in "
                    "front: its connection cap, e.g. nginx worker_connections) and its open-file limit",
                    "or spread the clients over more server processes (a port range in client.url)",
                ))


def _nginx_reuses(f: Failure, w: Window, ctx: Context) -> Finding | None:
    if not (f.cause in PEER_CLOSED and ctx.protocol == "http" and _server_is(w, "nginx")):
        return None
    # At its worker_connections nginx closes idle keep-alive connections to take new
    # ones ("worker_connections are not enough, reusing connections" in its error log),
    # or closes the new ones: either way the clients see their connections closed.
    return _cap(f.key, w, "nginx closes connections: its worker_connections are used up", "", (
        "raise worker_connections (events { worker_connections 65536; } in nginx.conf): each worker "
        "holds at most that many connections, its listeners included",
        "and worker_rlimit_nofile (at least worker_connections, e.g. worker_rlimit_nofile 131072;) so "
        "the workers may open that many files; more worker_processes multiply both",
    ))


def _closed_before_session(f: Failure, w: Window, ctx: Context) -> Finding | None:
    """A new connection closed before its session opened: another protocol, or the server's cap."""
    if w.open == 0 and not any(k.split(":")[0] in ("first_ping", "steady") for k in w.failures):
        # Not one session ever opened, and not a word: a TLS server (OpenSSL closes on
        # a plain-text first record without an alert) or a server of another protocol.
        return wrong_server(w, ctx, f.key, silent=True)
    if ctx.protocol == "mqtt":
        return _cap(f.key, w, "the MQTT broker closes new connections before its CONNACK (at its connection "
                    "cap or its open-file limit)", "", (
                        "raise the broker's cap (mosquitto: max_connections in mosquitto.conf, -1 for none; "
                        "its log says \"max_connections exceeded\")",
                        "and its open-file limit (ulimit -n, LimitNOFILE= in its systemd unit)",
                    ))
    if ctx.protocol in ("redis", "websocket", "http"):
        return _cap(f.key, w, "the server closes new connections before the session opens (a connection "
                    "cap or its open-file limit)", "", (
                        "see the server's log for why it closed them; raise its connection cap and its "
                        "open-file limit (ulimit -n, LimitNOFILE=)",
                    ))
    return None


def _handshake_timeout(f: Failure, w: Window) -> Finding:
    evidence = [count_line(w, f.key)]
    fixes = ["a slower ramp (scenario.rate), a longer client.handshake_timeout, or more server capacity "
             "(more worker processes or cores for it)"]
    kernel = kernel_line(w)
    if kernel:
        # Connections the kernel completed but the server never accepted wait unanswered.
        evidence.append(f"{kernel}: the server's accept queue overflowed")
        fixes.insert(0, "a larger accept queue on the server: its listen backlog (nginx: listen ... "
                        "backlog=65535; Redis: tcp-backlog) with sysctl -w net.core.somaxconn=65535")
    return Finding("server_starved", "server",
                   "the server does not complete new sessions in time (handshake_timeout)",
                   tuple(evidence), tuple(fixes), confident=True)


def _refused(f: Failure, w: Window) -> Finding:
    """A refusal in the server's own protocol (an error reply, a status, a close code)."""
    cause = f.cause
    fix = _REFUSED_FIXES.get(cause, "see the server's log: it said why")
    if cause.startswith("http_") and cause[5:].isdigit() and int(cause[5:]) >= 500:
        fix = "the server fails the request: see its log (an upstream down, a limit reached)"
    elif cause.startswith("http_4"):
        fix = "check client.url's path, client.http.method and headers: the server refuses the request"
    elif cause.startswith("ws_close_"):
        fix = "the server closed the WebSocket with this code: see its log (1001: going away, 1008: policy)"
    quote = _quote(w, cause)
    return _said_no(f, w, f"the server refused: {quote or cause}", quote, (fix,))


def _said_no(f: Failure, w: Window, headline: str, quote: str, fixes: Sequence[str]) -> Finding:
    return Finding("server_refused", "server", headline,
                   (count_line(w, f.key),) + ((f"the server said: {quote}",) if quote else ()), tuple(fixes))


def server_words(f: Failure, w: Window, ctx: Context) -> Finding | None:
    """A failure a profile named from what the server said or did (None: not one of those).

    Each server's cap is named with its fix: Redis's maxclients, nginx's
    worker_connections, a broker's CONNACK refusal or its connection cap, a
    WebSocket server's 503 at the upgrade; the server's words are quoted."""
    for rule in (_redis_maxclients, _connack, _websocket_503, _nginx_reuses):
        found = rule(f, w, ctx)
        if found is not None:
            return found
    if f.phase == "connect" and f.cause in PEER_CLOSED:
        return _closed_before_session(f, w, ctx)
    if f.cause == "handshake_timeout":
        return _handshake_timeout(f, w)
    if f.cause.startswith(("redis_", "http_", "ws_")) or f.cause == "expect_mismatch":
        return _refused(f, w)
    return None


def wrong_server(w: Window, ctx: Context, key: str, silent: bool = False) -> Finding:
    """Replies that are not the profile's protocol: another server, or TLS spoken to in plain text.

    `silent`: the server said nothing at all, it closed every connection before the session opened."""
    evidence = [count_line(w, key)]
    fixes = []
    tls_fix = "use the TLS scheme (rediss://, https://, wss://, mqtts://, tls://) or client.tls.enabled"
    if silent:
        return Finding("protocol", "server",
                       f"the server closes every new connection before a {ctx.protocol} session opens, without a "
                       "word: it may expect TLS, or speak another protocol",
                       (*evidence, "no connection ever opened a session; the server sent nothing before closing"),
                       (tls_fix + " if it speaks TLS",
                        "check client.url's scheme and port, and the server's log for why it closes them"))
    if w.said.get("unexpected_reply"):
        evidence.append(f'the server answered: "{w.said["unexpected_reply"]}"')
    if w.said.get("too_large"):
        evidence.append(f"a reply was too large: {w.said['too_large']}")
    if w.said.get("tls_reply"):
        headline = f"the server speaks TLS, the clients plain {ctx.protocol}"
        fixes.append(tls_fix)
    else:
        headline = f"the server does not speak {ctx.protocol}: its replies are another protocol (protocol errors)"
        fixes.append("check client.url's scheme and port: another server answers there")
    fixes.append("client.max_reply bounds one reply; a server that sends more is cut off as too_large")
    return Finding("protocol", "server", headline, tuple(evidence), tuple(fixes))
