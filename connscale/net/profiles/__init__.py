"""Protocol profiles: what a client connection speaks to a server.

A profile is one small module here, exporting `PROFILE` (a `base.Profile` subclass): how a
session opens (a Redis PING, an HTTP request, a WebSocket upgrade, an MQTT CONNECT), what
one keepalive exchange is, and a thin parser (a `ClientConnection` subclass) that parses
what the server sends and forwards it to the pool. The pool, the timer wheel, pacing, the
RTT histogram and the failure classes are shared (`net.pool`); a profile holds no timers
and no statistics of its own.

Adding one (STOMP, an AMQP heartbeat) is one module here, named as the protocol, and its
name in `config.target.PROTOCOLS` (one line); a URL scheme for it is one more line of
`config.target.SCHEMES`, if it has one.
Modules are imported on first use, so a worker loads only the profile it speaks.
"""

from __future__ import annotations

import importlib

from connscale.config.target import PROTOCOLS, ProfileOptions
from connscale.net.profiles.base import Profile, ProfileError

__all__ = ["MODULES", "Profile", "ProfileError", "load", "make_profile"]

#: protocol name -> its module: `connscale.net.profiles.<name>` for every name of
#: `config.target.PROTOCOLS`, the one list a new profile joins (the config validates
#: `client.protocol` against it, and the config layer cannot import this one).
MODULES: dict[str, str] = {name: f"{__name__}.{name}" for name in PROTOCOLS}


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
