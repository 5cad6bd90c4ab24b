"""`custom`: bytes of your own every interval, and what the answer must look like.

`send` is written with escapes (`\\r \\n \\t \\0 \\\\ \\xHH`) and `{n}`, the
connection's number; the answer is a success when it starts with `expect` (bytes,
the same escapes), or when `expect_regex` finds a match in it, or (neither given)
when anything arrives. An answer that cannot match any more is `expect_mismatch`,
its first bytes kept as the server's words. What arrives while no request is out
(a banner) is read and dropped. What is buffered is bounded by `max_reply`, and a
regular expression has no backreferences (config.target checks both).
"""

from __future__ import annotations

import re
from typing import cast

from connscale.config.target import unescape
from connscale.net.profiles.base import Profile, ProfileConnection


#: Bytes an answer may grow to while `expect_regex` finds no match: each read searches
#: the whole answer again, so this bounds the work per answer as well as the memory.
REGEX_WINDOW = 4096


class CustomConnection(ProfileConnection):
    __slots__ = ()

    def dataReceived(self, data: bytes) -> None:
        if not self.sent_at:
            self.buf = b""
            return  # nothing asked: a banner, or chatter
        if self.overflow(data):
            return
        profile = cast(CustomProfile, self.pool.profile)  # a CustomProfile builds these connections
        buf = self.buf
        if profile.regex is not None:
            if profile.regex.search(buf) is None:
                if len(buf) > REGEX_WINDOW:
                    self.buf = b""
                    self.pool.refused(self, "expect_mismatch", buf[:80])
                return
        elif profile.expect:
            n = min(len(buf), len(profile.expect))
            if buf[:n] != profile.expect[:n]:
                self.buf = b""
                self.pool.refused(self, "expect_mismatch", buf[:80])
                return
            if n < len(profile.expect):
                return  # a prefix so far: wait for the rest
        self.buf = b""
        self.pool.pong(self)


class CustomProfile(Profile):
    name = "custom"
    connection = CustomConnection

    def __init__(self, options, interval, timeout):
        super().__init__(options, interval, timeout)
        self.expect = unescape(options.expect, 0)
        pattern = options.expect_regex
        self.regex = re.compile(pattern.encode("latin-1")) if pattern is not None else None
        # The same bytes for every connection unless the template numbers them.
        self.ping = None if "{n}" in options.send else unescape(options.send, 0)

    def ping_for(self, conn: ProfileConnection) -> bytes:
        return unescape(self.options.send, conn.serial)

    def describe(self) -> str:
        return f"custom {self.options.send[:40]!r}"


PROFILE = CustomProfile
