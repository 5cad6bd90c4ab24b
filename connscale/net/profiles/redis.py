"""`redis`: `PING` every interval, `+PONG` is the answer (RESP, any Redis-speaking server).

The session opens with a first PING (after `AUTH` when a password is given): a server at its `maxclients` accepts the TCP
connection, writes `-ERR max number of clients reached` and closes it, so the
connection is counted as refused in the server's words (phase connect), never as held.
A RESP error at any time is a refusal classified by its words (a bounded set of
causes, the words themselves kept as a sample).
"""

from __future__ import annotations

from connscale.net.profiles.base import Profile, ProfileConnection, undecided

PING = b"*1\r\n$4\r\nPING\r\n"
PONG = b"+PONG\r\n"


def command(words: list[str]) -> bytes:
    """A RESP command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def error_cause(line: bytes) -> str:
    """A RESP error line (`-ERR ...`) -> a cause from the bounded set."""
    text = line[1:].lower()
    if b"max number of clients" in text:
        return "redis_maxclients"
    if text.startswith((b"noauth", b"wrongpass")) or b"authentication required" in text:
        return "redis_noauth"
    if text.startswith(b"loading"):
        return "redis_loading"
    return "redis_error"


class RedisConnection(ProfileConnection):
    __slots__ = ()

    def dataReceived(self, data: bytes) -> None:
        pool = self.pool
        if data == PONG and not self.buf:
            if self.state == self.OPEN:
                pool.pong(self)
            else:
                pool.session_open(self)
            return
        if self.overflow(data):
            return
        while self.buf and self.alive:
            end = self.buf.find(b"\r\n")
            if end < 0:
                if self.buf[:1] not in (b"+", b"-") and not undecided(self.buf):
                    self.foreign(self.buf)
                return
            line, self.buf = self.buf[:end], self.buf[end + 2:]
            if line == b"+PONG":
                if self.state == self.OPEN:
                    pool.pong(self)
                else:
                    pool.session_open(self)
            elif line == b"+OK" and self.state == self.HANDSHAKING:
                pass  # AUTH accepted; the opening's PING answers next
            elif line[:1] == b"-":
                pool.refused(self, error_cause(line), line)
                return
            else:
                self.foreign(line)
                return


class RedisProfile(Profile):
    name = "redis"
    connection = RedisConnection
    opens = True
    ping = PING

    def __init__(self, options, interval, timeout):
        super().__init__(options, interval, timeout)
        # AUTH first when the URL or client.password gives a password (redis://[USER]:PASS@HOST).
        auth = [] if options.password is None else \
            ["AUTH", *([options.user] if options.user else []), options.password]
        self._opening = (command(auth) if auth else b"") + PING

    def opening(self, conn: object, host: str, port: int) -> bytes:
        return self._opening


PROFILE = RedisProfile
