"""`http`: HTTP/1.1 keep-alive, one request every interval (`GET <path>` with Host by default).

Success is a complete response with a status below 400: Content-Length and chunked
bodies are read (and dropped, never buffered), bounded by `max_reply`. The session
opens with the first response, so a server that refuses new connections (a 503, a
close, a reset) is phase `connect`. A status of 400 or more is a refusal in the
server's words (its status line; cause `http_<status>`); a `Connection: close`, or a
body that only the close would end, is `http_connection_close`; a reset is ECONNRESET.
The `Server:` header of the first response is kept (`said["server"]`): the verdict
names nginx's `worker_connections` only when it knows it was nginx.
"""

from __future__ import annotations

from connscale.net.profiles.base import Profile, ProfileConnection, undecided
from connscale.net.profiles.httphead import BadHead, Head, parse_head, refused, split_head

HEAD, BODY, CHUNK_SIZE, CHUNK_DATA, TRAILER = range(5)
#: A chunk-size or trailer line longer than this is not HTTP.
MAX_LINE = 1024
_HEX = frozenset(b"0123456789abcdefABCDEF")


class HttpConnection(ProfileConnection):
    __slots__ = ("size",)

    def __init__(self, pool: object, route: int) -> None:
        super().__init__(pool, route)
        self.size = 0  # bytes of the response being read

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.pool.profile.options.max_reply:
            self._oversized(data)
            return
        buf = self.buf + data if self.buf else data
        self.buf = b""
        # Each step reads what its stage needs from the front of `buf` and returns the
        # rest, or None when it keeps the rest for the next read (or the connection is done).
        while buf and self.alive:
            stage = self.stage
            if stage == HEAD:
                rest = self._read_head(buf)
            elif stage == BODY or stage == CHUNK_DATA:
                rest = self._read_data(buf)
            else:
                rest = self._read_line(buf)
            if rest is None:
                return
            buf = rest
            if self.stage == HEAD:
                self.size = len(buf)  # the next response starts here
        if self.alive:
            self.buf = buf

    def _oversized(self, data: bytes) -> None:
        """More than max_reply in one response: too large, or not HTTP at all."""
        if self.stage == HEAD and not self.buf and not data.startswith(b"HTTP/"):
            self.foreign(data)  # a first read too large to be a response head: another protocol
        else:
            self.too_large()

    def _read_head(self, buf: bytes) -> bytes | None:
        """A response head, handled (`_head`) once it is whole."""
        parts = split_head(buf)
        if parts is None:
            if b"HTTP/1."[: len(buf)] != buf[:7] and not undecided(buf):
                self.foreign(buf)
            else:
                self.buf = buf
            return None
        raw, rest = parts
        try:
            head = parse_head(raw)
        except BadHead:
            self.foreign(raw)
            return None
        return rest if self._head(head) else None

    def _read_data(self, buf: bytes) -> bytes:
        """Body bytes (a Content-Length body or a chunk's data), counted and dropped."""
        take = min(self.need, len(buf))
        self.need -= take
        if self.need == 0:
            if self.stage == BODY:
                self._done()
            else:
                self.stage = CHUNK_SIZE
        return buf[take:]

    def _read_line(self, buf: bytes) -> bytes | None:
        """A chunk-size line, or a trailer line (an empty one ends the response)."""
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > MAX_LINE:
                self._fail("bad_frame")
            else:
                self.buf = buf
            return None
        line, rest = buf[:end], buf[end + 2:]
        if self.stage == TRAILER:
            if not line:
                self._done()
            return rest
        digits = line.split(b";", 1)[0].strip()
        if not digits or len(digits) > 8 or not _HEX.issuperset(digits):
            self._fail("bad_frame")
            return None
        size = int(digits, 16)
        if size == 0:
            self.stage = TRAILER
        else:
            self.need = size + 2  # its data and the CRLF after it
            self.stage = CHUNK_DATA
        return rest

    def _head(self, head: Head) -> bool:
        """A response head arrived; False when the connection is done with."""
        pool = self.pool
        if 100 <= head.status < 200:
            if head.status == 101:
                self.foreign(head.line)
                return False
            return True  # 100 Continue and friends: the real response follows
        if refused(self, head):
            return False
        self.want = head
        if pool.profile.options.method == "HEAD" or head.status in (204, 304):
            self._done()
        elif head.has_token(b"transfer-encoding", b"chunked"):
            self.stage = CHUNK_SIZE
        elif head.get(b"content-length"):
            length = head.get(b"content-length").split(b",")[0].strip()
            if not length.isdigit() or len(length) > 12:
                self._fail("bad_frame")
                return False
            self.need = int(length)
            if self.need > pool.profile.options.max_reply:
                self.too_large()
                return False
            self.stage = BODY
            if self.need == 0:
                self._done()
        else:
            pool.refused(self, "http_connection_close",
                         head.line + b" (no Content-Length: the body ends with the connection)")
            return False
        return self.alive

    def _done(self) -> None:
        head: Head = self.want
        self.stage = HEAD
        if head.has_token(b"connection", b"close") or (head.line.startswith(b"HTTP/1.0")
                                                       and not head.has_token(b"connection", b"keep-alive")):
            self.pool.refused(self, "http_connection_close", head.line + b" with Connection: close")
        elif self.state == self.OPEN:
            self.pool.pong(self)
        else:
            self.pool.session_open(self)

    def _fail(self, kind: str) -> None:
        self.buf = b""
        self.pool.bad_reply(self, kind)


class HttpProfile(Profile):
    name = "http"
    connection = HttpConnection
    opens = True

    def __init__(self, options, interval, timeout):
        super().__init__(options, interval, timeout)
        o = options
        lines = [f"{o.method} {o.path} HTTP/1.1", f"Host: {o.host or 'localhost'}", "User-Agent: connscale"]
        lines += [f"{name}: {value}" for name, value in o.headers]
        self.ping = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def opening(self, conn: object, host: str, port: int) -> bytes:
        assert self.ping is not None
        return self.ping

    def describe(self) -> str:
        return f"http {self.options.method} {self.options.path}"


PROFILE = HttpProfile
