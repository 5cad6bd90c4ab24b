"""The one switch between connscale's fast path and Twisted's own transports.

The fast path is one layer: `net.transport`, `net.connector` and `net.port`
(an fd and a few slots per connection instead of `tcp.Server`/`tcp.Client`,
and the accept loop instead of `tcp.Port`), `net.dispatch` (connscale's
sockets dispatched straight from the reactor's epoll, and a worker loop that
runs Twisted's timers only when one is due), `net.wheel` (one reactor timer for
every connection's pings and timeouts), and the private Twisted and CPython
names they use (`compat.epoll`, `compat.sockets`). They save CPU and memory per
connection (bench/README.md, "The fast path, on and off") and are the largest
risk for whoever upgrades Twisted.

Off, connscale runs on stock Twisted: `adoptStreamPort` (listenTCP's port,
for the pre-bound SO_REUSEPORT sockets) with the same `PingServerFactory`,
`connectTCP` with the same `PingClientFactory`, and one `callLater` per
connection for its ping and its timeout. Everything above the transports (the
protocols, the pool's policy, counters, classification) is the same code.

The switch is the config key `net.fast_path` (default on), and the environment
variable `CONNSCALE_FAST_PATH` (1/on/true or 0/off/false), which wins when set:
a process started by hand, a test, or a bench can choose without a config.
A hub or an agent passes its choice to its workers in their spec. The fast path
also needs Twisted's epoll reactor: on another reactor it is off whatever the
switch says.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from connscale.net.dispatch import Loop
from connscale.net.dispatch import loop_for as _loop_for

ENV = "CONNSCALE_FAST_PATH"
_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


class FastPathError(ValueError):
    """CONNSCALE_FAST_PATH holds something that is neither on nor off."""


def from_env(environ: Mapping[str, str] | None = None) -> bool | None:
    """The environment's word (None when CONNSCALE_FAST_PATH is unset or empty)."""
    value = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if not value:
        return None
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise FastPathError(f"{ENV}={value!r}: expected one of {', '.join(_ON + _OFF)}")


def enabled(configured: bool = True, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to take the fast path: the environment's word if it has one, else the config's."""
    env = from_env(environ)
    return configured if env is None else env


def loop(reactor: Any, fast_path: bool) -> Loop | None:
    """connscale's dispatch loop on `reactor` (installed on first use), or None
    for Twisted's own transports: the switch is off, or the reactor is not epoll."""
    return _loop_for(reactor) if fast_path else None
