"""A lighter start for worker processes: leave out what Twisted imports but a worker never uses.

A million connections need about a hundred worker processes on one box
(RLIMIT_NOFILE caps each at ~19,900 sockets), so every megabyte a worker
carries from start-up counts a hundred times. A worker speaks PB over its
pipes and TCP on loopback or a LAN: no TLS, no HTTP, no cookies. This module
must be imported before Twisted, and imports nothing itself but the stdlib
(`import_twisted_lean` imports Twisted's core when it is called).
"""

from __future__ import annotations

import collections.abc
import importlib
import sys
import types

#: Modules a worker never uses but Twisted would load (RSS measured on a worker
#: at start, bench/README.md): pyOpenSSL (twisted.internet.tcp tries it, 13 MB);
#: ssl, _ssl and _hashlib (asyncio and http.client try them; they map OpenSSL's
#: libraries, ~4 MB; hashlib falls back to its built-in digests); ctypes
#: (twisted.python.win32 tries `from ctypes import WinError`, which fails on
#: Linux anyway; ~150 KB and libffi).
ABSENT = ("OpenSSL", "ssl", "_ssl", "_hashlib", "ctypes")

#: `twisted.python.compat` does `from http import cookiejar` at import time, for
#: twisted.web's client only; the real module drags in urllib.request,
#: http.client and email (~1.5 MB). A worker gets an empty stand-in.
STAND_INS = ("http.cookiejar",)

class _StandIn(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        raise AttributeError(f"{self.__name__} is not loaded in connscale worker processes (asked for {name})")


#: What a worker whose connections speak TLS keeps of ABSENT (net/tls.py uses the stdlib's ssl).
TLS_MODULES = ("ssl", "_ssl", "_hashlib")


def skip_unused_modules(keep: tuple[str, ...] = ()) -> None:
    """Mark the modules above as absent (an `import` of them fails cleanly), but those in `keep`."""
    for name in ABSENT:
        if name not in keep:
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    for name in STAND_INS:
        if name not in sys.modules:
            sys.modules[name] = _StandIn(name)


# --------------------------------------------------------------------- asyncio

#: What `twisted.internet.defer` takes from asyncio when it is imported
#: (`from asyncio import AbstractEventLoop, Future, iscoroutine`). The first two
#: are only annotations there (defer has `from __future__ import annotations`);
#: `iscoroutine` is called on callback results. Importing the real asyncio costs a
#: worker ~2.5 MB (53 modules, `_asyncio`, `subprocess`, `concurrent.futures`),
#: times a hundred workers, for an event loop no worker ever runs.
DEFER_NEEDS = ("AbstractEventLoop", "Future", "iscoroutine")

_COROUTINE_TYPES = (types.CoroutineType, collections.abc.Coroutine)
_coroutine_types_seen: set[type] = set()


def _iscoroutine(obj: object) -> bool:
    """asyncio.iscoroutine as of Python 3.12 (3.11 also says True for generators,
    which defer checks separately with `inspect.isgenerator`: the same answer there)."""
    if type(obj) in _coroutine_types_seen:
        return True
    if isinstance(obj, _COROUTINE_TYPES):
        if len(_coroutine_types_seen) < 100:
            _coroutine_types_seen.add(type(obj))
        return True
    return False


class _AbstractEventLoop:
    """Stands for asyncio.AbstractEventLoop in defer's annotations only."""


class _Future:
    """Stands for asyncio.Future in defer's annotations only."""


class _AsyncioForDefer(types.ModuleType):
    """`asyncio` while `twisted.internet.defer` is imported, with just `DEFER_NEEDS`.

    Any other name (a Twisted release that wants more of asyncio at import time)
    brings in the real asyncio and answers from it: the worker then pays for
    asyncio, and nothing breaks.
    """

    AbstractEventLoop = _AbstractEventLoop
    Future = _Future
    iscoroutine = staticmethod(_iscoroutine)

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            # The import system asks for __path__ and friends: a plain module has none.
            raise AttributeError(name)
        return getattr(_real_module("asyncio", self), name)


def _real_module(name: str, stand_in: types.ModuleType) -> types.ModuleType:
    if sys.modules.get(name) is stand_in:
        del sys.modules[name]
    return importlib.import_module(name)


# --------------------------------------------------------------------- decimal

class _NoDecimalYet:
    """`decimal.Decimal` for jelly while nothing has imported decimal.

    jelly asks `type(obj) is decimal.Decimal` for every list and dict it sends; no
    Decimal can exist before decimal is imported, so the answer is False either way.
    Made (by `_unjelly_decimal`), it makes a real Decimal.
    """

    def __new__(cls, *args: object, **kwargs: object) -> object:  # type: ignore[misc]
        return importlib.import_module("decimal").Decimal(*args, **kwargs)


class _DecimalForJelly(types.ModuleType):
    """`decimal` as `twisted.spread.jelly` sees it (`import decimal`, then
    `decimal.Decimal` at call time): the real module once anything imported it.
    A worker never sends a Decimal, and the module (with `_decimal` and `numbers`)
    costs ~0.4 MB of each worker's RSS."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        real = sys.modules.get("decimal")
        if name == "Decimal" and (real is None or real is self):
            return _NoDecimalYet
        value = getattr(_real_module("decimal", self), name)
        setattr(self, name, value)  # from now on without __getattr__
        return value


# ------------------------------------------------------------------ html, http

def _escape(s: str, quote: bool = True) -> str:
    """`html.escape`, by the real one: imported on the first call (never, in a worker)."""
    import html

    return html.escape(s, quote)


class _NamesForCompat(types.ModuleType):
    """`html` or `http` while `twisted.python.compat` is imported: it takes
    `escape` from one and the `cookiejar` stand-in (see STAND_INS) from the other,
    for twisted.web only. The real `html` builds its entity tables (~340 KB), `http`
    its HTTPStatus enum (~70 KB); any other name brings the real module."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_real_module(self.__name__, self), name)


def _compat_stand_ins() -> dict[str, types.ModuleType]:
    html = _NamesForCompat("html")
    html.escape = _escape  # type: ignore[attr-defined]
    http = _NamesForCompat("http")
    jar = sys.modules.get("http.cookiejar")
    if isinstance(jar, _StandIn):
        http.cookiejar = jar  # type: ignore[attr-defined]
    return {"html": html, "http": http}


def _import_with_stand_ins(module: str, stand_ins: dict[str, types.ModuleType]) -> None:
    """Import `module` while `stand_ins` are in sys.modules, then take them out.

    Nothing is done if the module or any of the real ones is already imported.
    """
    if module in sys.modules or any(name in sys.modules for name in stand_ins):
        return
    sys.modules.update(stand_ins)
    try:
        importlib.import_module(module)
    finally:
        for name, stand_in in stand_ins.items():
            if sys.modules.get(name) is stand_in:
                del sys.modules[name]


def import_twisted_lean() -> None:
    """Import Twisted's core (`twisted.internet.defer`) without the real asyncio,
    html and http, and PB's jelly without the real decimal.

    For worker processes only, before anything imports Twisted (call
    `skip_unused_modules` first); these modules stay importable afterwards (the
    stand-ins are in `sys.modules` only meanwhile).
    """
    _import_with_stand_ins("twisted.internet.defer", {"asyncio": _AsyncioForDefer("asyncio"), **_compat_stand_ins()})
    _import_with_stand_ins("twisted.spread.jelly", {"decimal": _DecimalForJelly("decimal")})
