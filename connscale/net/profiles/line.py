"""`line`: connscale's own ping, `Ping\\n` -> `Pong\\n` (the default, and the fast path).

The parser is `wire.ClientConnection` itself, unchanged: a pong that arrives whole
in one read is one comparison (bench/README.md)."""

from __future__ import annotations

from connscale.net.profiles.base import Profile
from connscale.net.wire import PING, ClientConnection


class LineProfile(Profile):
    name = "line"
    connection = ClientConnection
    ping = PING + b"\n"


PROFILE = LineProfile
