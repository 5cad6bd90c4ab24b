"""A lighter start for worker processes: leave out what Twisted imports but a worker never uses.

A million connections need about a hundred worker processes on one box
(RLIMIT_NOFILE caps each at ~19,900 sockets), so every megabyte a worker
carries from start-up counts a hundred times. A worker speaks PB over its
pipes and TCP on loopback or a LAN: no TLS, no HTTP, no cookies. This module
must be imported before Twisted, and imports nothing itself but the stdlib.
"""

from __future__ import annotations

import sys
import types

#: Modules a worker never uses but Twisted would load (RSS measured on a worker
#: at start, bench/README.md): pyOpenSSL (twisted.internet.tcp tries it, 13 MB);
#: ssl, _ssl and _hashlib (asyncio and http.client try them; they map OpenSSL's
#: libraries, ~4 MB; hashlib falls back to its built-in digests).
ABSENT = ("OpenSSL", "ssl", "_ssl", "_hashlib")

#: `twisted.python.compat` does `from http import cookiejar` at import time, for
#: twisted.web's client only; the real module drags in urllib.request,
#: http.client and email (~1.5 MB). A worker gets an empty stand-in.
STAND_INS = ("http.cookiejar",)

class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        raise AttributeError(f"{self.__name__} is not loaded in connscale worker processes (asked for {name})")


def skip_unused_modules() -> None:
    """Mark the modules above as absent (an `import` of them fails cleanly)."""
    for name in ABSENT:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    for name in STAND_INS:
        if name not in sys.modules:
            sys.modules[name] = _StandIn(name)
