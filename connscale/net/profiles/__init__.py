"""Protocol profiles: what a client connection speaks to a server.

A profile is one small module here, exporting `PROFILE` (a `base.Profile` subclass): how a
session opens (a Redis PING, an HTTP request, a WebSocket upgrade, an MQTT CONNECT), what
one keepalive exchange is, and a thin parser (a `ClientConnection` subclass) that parses
what the server sends and forwards it to the pool. The pool, the timer wheel, pacing, the
RTT histogram and the failure classes are shared (`net.pool`); a profile holds no timers
and no statistics of its own.

Adding one (STOMP, an AMQP heartbeat) is one module and one line below; its name must
also be in `config.target.PROTOCOLS` (tests/test_profiles.py checks the two agree).
Modules are imported on first use, so a worker loads only the profile it speaks.
"""

from __future__ import annotations

import importlib

from connscale.config.target import ProfileOptions
from connscale.net.profiles.base import Profile, ProfileError

__all__ = ["MODULES", "Profile", "ProfileError", "load", "make_profile"]

#: protocol name -> its module (one line per profile).
MODULES: dict[str, str] = {
    "line": "connscale.net.profiles.line",
    "raw": "connscale.net.profiles.raw",
    "redis": "connscale.net.profiles.redis",
    "http": "connscale.net.profiles.http",
    "websocket": "connscale.net.profiles.websocket",
    "mqtt": "connscale.net.profiles.mqtt",
    "custom": "connscale.net.profiles.custom",
}


def load(name: str) -> type[Profile]:
    """The profile class registered as `name`."""
    try:
        module = MODULES[name]
    except KeyError:
        raise ProfileError(f"unknown protocol {name!r} (known: {', '.join(MODULES)})") from None
    cls: type[Profile] = importlib.import_module(module).PROFILE
    return cls


def make_profile(options: ProfileOptions, interval: float, timeout: float) -> Profile:
    return load(options.protocol)(options, interval, timeout)
