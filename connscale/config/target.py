"""What the clients speak to: the protocol profile, its options, TLS, and the URL that names them.

A target is named once, by `client.url` (`redis://127.0.0.1:6379`, `wss://host:9000/socket`,
`tcp://host:8989-8992`) or by `client.protocol` with `client.server`; the profile's own
options (`client.http`, `client.websocket`, `client.mqtt`, `client.custom`) and `client.tls`
say what a URL cannot. `parse_url` is the one URL parser; `ProfileOptions` is the typed
record a client worker is started with (it crosses a process boundary in
`procs.records.ClientSpec`), so it lives here, in the lowest layer that validates.

TLS is only *named* here (the schemes that ask for it, `Target.tls`); its settings record is
`config.tls.ClientTLSSettings`, which `config.loader` switches on for a TLS scheme, and the
handshake belongs to `net/tls`, which wraps a connection where `net.pool` dials.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from connscale.records.base import (
    Record,
    RecordError,
    choice,
    field,
    integer,
    number,
    optional,
    text,
)

#: Every protocol profile, the one registration of a new one: `net/profiles/<name>.py`
#: is its module (tests/test_profiles.py loads each).
PROTOCOLS: tuple[str, ...] = ("line", "raw", "redis", "http", "websocket", "mqtt", "custom")

#: URL scheme -> (protocol, TLS on). `tcp` is connscale's own line ping.
SCHEMES: Mapping[str, tuple[str, bool]] = {
    "tcp": ("line", False), "tls": ("line", True), "raw": ("raw", False),
    "redis": ("redis", False), "rediss": ("redis", True),
    "http": ("http", False), "https": ("http", True),
    "ws": ("websocket", False), "wss": ("websocket", True),
    "mqtt": ("mqtt", False), "mqtts": ("mqtt", True),
}
#: The port a scheme means when the URL names none.
DEFAULT_PORTS: Mapping[str, int] = {
    "tcp": 8989, "tls": 8989, "raw": 8989, "redis": 6379, "rediss": 6379, "http": 80, "https": 443,
    "ws": 80, "wss": 443, "mqtt": 1883, "mqtts": 8883,
}

#: Bytes of one reply (a response, a frame, a line) a profile reads before it calls it oversized.
MAX_REPLY = 64 * 1024
_HEADER_NAME = r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}"
_HEADER_VALUE = r"[\t\x20-\x7e]{0,1024}"
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}"
_PATH = r"/[\x21-\x7e]{0,2047}"


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    """Extra request headers: a mapping (YAML) or [name, value] pairs (the wire)."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
        items = [tuple(v) for v in value]
    else:
        raise RecordError("expected a mapping of header: value")
    if len(items) > 32:
        raise RecordError(f"at most 32 headers, got {len(items)}")
    out = []
    for name, val in items:
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            val = str(val)
        out.append((text(64, _HEADER_NAME, "a header name")(name),
                    text(1024, _HEADER_VALUE, "a header value of printable ASCII")(val)))
    return tuple(out)


def _regex(value: object) -> str:
    """A bounded regular expression: short, compiled once, no backreferences (whose
    matching can take exponential time on a hostile reply)."""
    s = text(256)(value)
    if re.search(r"\\[1-9]|\(\?P=", s):
        raise RecordError("backreferences are not allowed")
    try:
        re.compile(s.encode("latin-1"))
    except (re.error, UnicodeEncodeError) as e:
        raise RecordError(f"not a regular expression: {e}") from None
    return s


def _escaped(value: object) -> str:
    """Bytes written with escapes (\\r \\n \\t \\0 \\\\ \\xHH); `{n}` is the connection's number."""
    s = text(4096)(value)
    unescape(s, 0)  # raises on a bad escape
    return s


_ESCAPE = re.compile(r"\\(x[0-9A-Fa-f]{2}|[rnt0\\])|\\(.?)", re.DOTALL)


def unescape(template: str, n: int) -> bytes:
    """`custom.send` as bytes for connection number `n`."""
    def one(m: re.Match[str]) -> str:
        if m.group(1) is None:
            raise RecordError(f"unknown escape \\{m.group(2)} (known: \\r \\n \\t \\0 \\\\ \\xHH)")
        code = m.group(1)
        return chr(int(code[1:], 16)) if code[0] == "x" else {"r": "\r", "n": "\n", "t": "\t", "0": "\0",
                                                              "\\": "\\"}[code]
    try:
        return _ESCAPE.sub(one, template.replace("{n}", str(n))).encode("latin-1")
    except UnicodeEncodeError:
        raise RecordError("only latin-1 characters and \\xHH escapes") from None


@attrs.frozen
class ProfileOptions(Record):
    """Everything a profile needs beyond the pool's timing: one flat record for all of them
    (each profile reads its own fields), so a spec carries one thing whatever the protocol."""

    protocol: str = field(choice(*PROTOCOLS), default="line")
    #: The server as the URL named it (Host header, WebSocket Origin); "" = the route's address.
    host: str = field(text(255), default="")
    path: str = field(text(2048, _PATH, "a path starting with /"), default="/")
    #: http
    method: str = field(text(16, r"[A-Z]{1,16}", "an HTTP method in capitals"), default="GET")
    headers: tuple[tuple[str, str], ...] = field(_headers, default=())
    #: websocket
    subprotocol: str | None = field(optional(text(64, _TOKEN, "a token")), default=None)
    #: mqtt
    client_prefix: str = field(text(23, r"[0-9A-Za-z_.-]{0,23}", "up to 23 of [0-9A-Za-z_.-]"),
                               default="connscale-")
    user: str | None = field(optional(text(256)), default=None)
    password: str | None = field(optional(text(256)), default=None)
    #: custom
    send: str = field(_escaped, default="PING\\r\\n")
    expect: str = field(_escaped, default="")
    expect_regex: str | None = field(optional(_regex), default=None)
    #: Bytes of one reply at most (a response with its body, a frame, a line).
    max_reply: int = field(integer(64, 16 * 1024 * 1024), default=MAX_REPLY)
    #: Seconds a session opening (an HTTP upgrade, an MQTT CONNECT, Redis's first PING) may take
    #: once the connection is up; TLS's own handshake has `client.tls.handshake_timeout`.
    handshake_timeout: float = field(number(0.001, 3600), default=5.0)


@attrs.frozen
class Target:
    """What a URL names: protocol, TLS, host, ports and path."""

    scheme: str
    protocol: str
    tls: bool
    host: str
    ports: tuple[int, ...]
    path: str = "/"
    user: str | None = None
    password: str | None = None


_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:(?P<auth>[^@/?#]*)@)?(?P<hostport>[^/?#]*)"
                  r"(?P<path>/[^#]*)?(?:#.*)?", re.ASCII)


def parse_url(value: object, parse_hostport: Any) -> Target:
    """`client.url` -> Target; ValueError (one line, the key's message) when it does not fit.

    `parse_hostport` is the config's own HOST:PORT[-PORT] parser (one owner for ports)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a URL like redis://127.0.0.1:6379 or ws://host:9000/socket")
    m = _URL.fullmatch(value.strip())
    if m is None:
        raise ValueError(f"expected SCHEME://HOST[:PORT][/PATH], got {value.strip()[:60]!r}")
    scheme = m["scheme"].lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r} (known: {', '.join(SCHEMES)})")
    protocol, tls = SCHEMES[scheme]
    hostport = m["hostport"]
    if not hostport:
        raise ValueError("the URL names no host")
    if hostport.startswith("[") and hostport.endswith("]") or not hostport.startswith("[") and ":" not in hostport:
        hostport = f"{hostport}:{DEFAULT_PORTS[scheme]}"
    host, ports = parse_hostport(hostport)
    path = m["path"] or "/"
    if protocol not in ("http", "websocket") and path != "/":
        raise ValueError(f"a {scheme}:// URL takes no path, got {path[:60]!r}")
    user = password = None
    if m["auth"]:
        if protocol not in ("mqtt", "redis"):
            raise ValueError(f"a {scheme}:// URL takes no user:password")
        from urllib.parse import unquote

        u, _, p = m["auth"].partition(":")
        user, password = unquote(u) or None, (unquote(p) if p else None)
    return Target(scheme, protocol, tls, host, tuple(ports), path, user, password)
