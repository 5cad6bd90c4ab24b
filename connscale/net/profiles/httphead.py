"""An HTTP/1.1 response head, parsed: what `http` and `websocket` read before a body or frames.

Bounded by the caller (the head must fit in `max_reply`); tolerant of what servers
really send (any reason phrase, folded case in names), strict about the rest (a status
line that is not HTTP/1.x is another protocol)."""

from __future__ import annotations

import re
from typing import Any

import attrs

from connscale.metrics.counters import SERVER_HEADER

_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: [^\r\n]*)?")
#: Header lines kept from one response (more is a hostile server).
MAX_HEADERS = 100


class BadHead(ValueError):
    """Not an HTTP/1.x response head."""


@attrs.frozen
class Head:
    status: int
    #: The status line as the server wrote it (its own words).
    line: bytes
    #: Lower-cased names -> values (a repeated header's values joined with ", ").
    headers: dict[bytes, bytes]

    def get(self, name: bytes) -> bytes:
        return self.headers.get(name, b"")

    def has_token(self, name: bytes, token: bytes) -> bool:
        return token in (t.strip().lower() for t in self.get(name).split(b","))


def parse_head(raw: bytes) -> Head:
    """`raw` is everything before the blank line (without it)."""
    lines = raw.split(b"\r\n")
    if not _STATUS.fullmatch(lines[0]):
        raise BadHead(lines[0][:80])
    if len(lines) > MAX_HEADERS + 1:
        raise BadHead(b"too many header lines")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadHead(line[:80])
        key = name.lower()
        value = value.strip()
        headers[key] = headers[key] + b", " + value if key in headers else value
    return Head(int(lines[0][9:12]), lines[0], headers)


def split_head(buf: bytes) -> tuple[bytes, bytes] | None:
    """(head, rest) once the blank line has arrived, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    return buf[:end], buf[end + 4:]


def status_cause(status: int) -> str:
    """A refusing status -> a cause from the bounded set (http_400 ... http_599)."""
    return f"http_{status}" if 400 <= status <= 599 else "http_bad_status"


def refused(conn: Any, head: Head) -> bool:
    """What every HTTP-opened session does with a response head: keep the server's name
    (its `Server:` header: the walls name nginx's caps by it), and refuse the session on a
    status of 400 or more, in the server's words. True when it refused."""
    pool = conn.pool
    server = head.get(b"server")
    if server:
        pool.counters.say(SERVER_HEADER, b"Server: " + server)
    if head.status >= 400:
        pool.refused(conn, status_cause(head.status), head.line)
        return True
    return False
