"""`raw`: the original Erlang tool's framing, `Ping` -> `Pong`, four bytes, no delimiter."""

from __future__ import annotations

from connscale.net.profiles.base import Profile
from connscale.net.wire import PING, ClientConnection


class RawProfile(Profile):
    name = "raw"
    connection = ClientConnection
    ping = PING


PROFILE = RawProfile
