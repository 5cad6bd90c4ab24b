"""Replacing what failed: connections opened again after a backoff.

A connection that fails or closes is replaced, so a pool keeps its target. Not
at once: a server that is down must not be hammered. `Replacements` counts the
connections waiting out the backoff (the pool counts them as wanted, so its
target stays true meanwhile) and hands them back all together when it has
passed. The backoff starts at REPLACE_BACKOFF and doubles while failures keep
coming, up to REPLACE_BACKOFF_MAX; a connection that opens resets it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

REPLACE_BACKOFF = 0.5
REPLACE_BACKOFF_MAX = 10.0


class Replacements:
    """Connections to open again once the backoff has passed, by `release(n)`."""

    def __init__(self, clock: IReactorTime, release: Callable[[int], None]) -> None:
        self.clock = clock
        self.release = release
        #: Connections waiting out the backoff.
        self.waiting = 0
        self.backoff = REPLACE_BACKOFF
        self._call: IDelayedCall | None = None

    def one_more(self) -> None:
        """One connection to open again once the current backoff has passed."""
        self.waiting += 1
        if self._call is None:
            delay = self.backoff
            # Failures that keep coming after a release back off further; a
            # successful connect resets it (`succeeded`).
            self.backoff = min(self.backoff * 2, REPLACE_BACKOFF_MAX)
            self._call = self.clock.callLater(delay, self._release)

    def succeeded(self) -> None:
        """A connection opened: the server takes them again, the next failure waits the least."""
        self.backoff = REPLACE_BACKOFF

    def take(self, n: int) -> int:
        """Take back up to `n` waiting replacements; how many were taken."""
        taken = min(n, self.waiting)
        self.waiting -= taken
        return taken

    def cancel(self) -> None:
        """Replace nothing more (the pool is closing)."""
        self.waiting = 0
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _release(self) -> None:
        self._call = None
        n, self.waiting = self.waiting, 0
        self.release(n)
