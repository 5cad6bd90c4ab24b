"""The manhole interpreter's private hook for showing a Deferred's result."""

from __future__ import annotations

from typing import Any

from twisted.conch import manhole
from twisted.internet import defer


class ResultShapingInterpreter(manhole.ManholeInterpreter):
    """A `ManholeInterpreter` that lets a subclass reshape a fired Deferred's result before it is shown.

    Twisted prints a Deferred's later result through `_cbDisplayDeferred`
    (private), as "Deferred #N called back: <repr>". `shown(result)` returns
    what to print instead; the Deferred's own result is left as it was.
    """

    def shown(self, result: object) -> object:
        return result

    def _cbDisplayDeferred(self, result: object, k: int, obj: defer.Deferred[Any]) -> object:
        super()._cbDisplayDeferred(self.shown(result), k, obj)
        return result
