"""Twisted's epoll reactor internals that connscale's event loop uses.

`net.dispatch.Loop` registers connscale's sockets with the reactor's own epoll
object and dispatches their events itself (one dict lookup and one method call
per event), and hands every other event to Twisted's own per-event dispatch.
This module is the only place that knows where those pieces live.
"""

from __future__ import annotations

import select
import types
from collections.abc import Callable
from typing import Any


def is_epoll_reactor(reactor: Any) -> bool:
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # no epoll on this platform
        return False
    return isinstance(reactor, EPollReactor)


def reactor_epoll(reactor: Any) -> select.epoll:
    """The epoll object the reactor waits on (`EPollReactor._poller`)."""
    return reactor._poller


def reactor_selectables(reactor: Any) -> dict[int, Any]:
    """fd -> Twisted selectable (`EPollReactor._selectables`)."""
    return reactor._selectables


def reactor_dispatch(reactor: Any) -> Callable[[Any, int, int], None]:
    """Twisted's handling of one event for one of its selectables
    (`_PollLikeMixin._doReadOrWrite(selectable, fd, event)`)."""
    return reactor._doReadOrWrite


#: Twisted's longest wait (2 ** 31 / 1000 s), as `ReactorBase.timeout` caps it.
LONGEST_WAIT = 2147483.0


def replace_main_loop(reactor: Any, poll_once: Callable[[float | None], None]) -> None:
    """Make this reactor instance's `mainLoop` a lean one around `poll_once(timeout)`.

    `ReactorBase.mainLoop` runs, on every turn, `runUntilCurrent()` (thread
    calls, `_insertNewDelayedCalls`, the clock, the heap of timed calls, the
    shutdown flag) and `timeout()` (the new calls and the clock again) inside a
    logging context manager: about ten Python calls before the poll. A worker
    at a million wakes ~300 times a second for one ping each, and every turn
    touches that code in a cold cache. This loop reads the same state
    (`_newTimedCalls`, `threadCallQueue`, `_justStopped`, `_pendingTimedCalls`,
    `_started`, `running`) and calls `runUntilCurrent` only when a timed call
    is due, new ones wait to be inserted, a thread call is queued, or the
    reactor was just stopped: timers, `callFromThread` and shutdown run exactly
    as Twisted runs them. Only this instance changes, never the class.
    """
    from twisted.logger import Logger

    log = Logger(namespace="connscale.dispatch")
    seconds = reactor.seconds
    run_timers = reactor.runUntilCurrent
    self = reactor

    def one_turn() -> None:
        pending = self._pendingTimedCalls
        now = seconds()
        if (self._newTimedCalls or self.threadCallQueue or self._justStopped
                or (pending and pending[0].time <= now)):
            run_timers()
            # Calls the timers just made: in the heap before we wait.
            self._insertNewDelayedCalls()
            pending = self._pendingTimedCalls
            now = seconds()
        if not self.running:
            timeout: float | None = 0.0
        elif pending:
            delay = pending[0].time - now
            timeout = 0.0 if delay < 0.0 else LONGEST_WAIT if delay > LONGEST_WAIT else delay
        else:
            timeout = None
        poll_once(timeout)

    def main_loop(_: Any) -> None:
        while self._started:
            try:
                while self._started:
                    one_turn()
            except BaseException:
                log.failure("Unexpected error in main loop.")
        log.info("Main loop terminated.")

    reactor.mainLoop = types.MethodType(main_loop, reactor)
    # One turn by itself, for a bench that drives the loop event by event.
    reactor.connscale_turn = one_turn


def replace_poll(reactor: Any, poll: Callable[[Any, float | None], None]) -> None:
    """Make `poll(reactor, timeout)` this reactor instance's `doIteration`.

    `ReactorBase.mainLoop` calls `doIteration(timeout)` once per turn, after
    running due timers; `EPollReactor` aliases it to `doPoll`. Only this
    instance changes, never the class.
    """
    method = types.MethodType(poll, reactor)
    reactor.doPoll = method
    reactor.doIteration = method
