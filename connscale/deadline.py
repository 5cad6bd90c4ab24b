"""Waiting at most N seconds for a Deferred, without cancelling it: the one owner (STYLE rule 12).

Twisted's `Deferred.addTimeout` cancels what it times out. connscale's waits must not: the hub's
once-a-second poll writes its line with what is in hand after `answer_wait`, and an answer that
lands later still counts (control/collect.py); a supervisor waits for its workers the same way.
So the deadline here bounds only the *waiter*: the call goes on, its result reaches its own
callbacks untouched, and the timer is cancelled as soon as it is no longer needed (a pending
timer keeps a `task.Clock` or a stopping reactor busy).

A bottom layer of its own (.importlinter): net, procs and control all wait this way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

__all__ = ["all_within", "unless_fired", "within"]

T = TypeVar("T")


def unless_fired(clock: IReactorTime, d: defer.Deferred[T], seconds: float,
                 on_timeout: Callable[..., object], *args: object) -> defer.Deferred[T]:
    """Call ``on_timeout(*args)`` after `seconds` unless `d` has fired by then; returns `d`.

    `d`'s result passes through; the timer is cancelled the moment `d` fires."""
    timer = clock.callLater(seconds, on_timeout, *args)

    def cancel(result: T) -> T:
        if timer.active():
            timer.cancel()
        return result

    return d.addBoth(cancel)


def within(clock: IReactorTime, d: defer.Deferred[Any], seconds: float) -> defer.Deferred[bool]:
    """Fires True when `d` has fired (with a result or a failure), or False after `seconds`,
    whichever comes first. `d` is not cancelled and keeps its result."""
    out: defer.Deferred[bool] = defer.Deferred()

    def settle(complete: bool) -> None:
        if not out.called:
            out.callback(complete)

    def landed(result: object) -> object:
        settle(True)
        return result

    unless_fired(clock, out, seconds, settle, False)
    d.addBoth(landed)
    return out


def all_within(clock: IReactorTime, calls: Sequence[defer.Deferred[Any]], seconds: float) -> defer.Deferred[bool]:
    """`within` for every call at once: True when all have fired, False after `seconds`.

    A failed call counts as fired; every call keeps its result (a failure stays the call's own
    to handle: the wait may observe a call others share, such as a question still outstanding)."""
    return within(clock, defer.DeferredList(list(calls)), seconds)
