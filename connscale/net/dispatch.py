"""connscale's event loop on top of the Twisted epoll reactor.

A worker holds up to ~19,900 sockets that each wake a few times a minute.
Twisted dispatches every event through `log.callWithLogger` (a `logPrefix()`
call and a log-context push) and `_doReadOrWrite` (a `fileno()` call and
several flag tests) before reaching the transport; its transports then add
their own layers. Here connscale's sockets (`net.transport`) register with the
reactor's own epoll object and are dispatched with one dict lookup and one
method call. Everything else the process runs (PB over stdio, the reactor's
waker, listening ports of other kinds) stays on Twisted's own path, in the same
`epoll_wait`, so the reactor, its timers and its shutdown work as usual.

`Loop.soon(fn, *args)` runs work outside the event that asked for it (a close, a
failed connect), before the next `epoll_wait`: a transport never calls back
into the code that is calling it, as with Twisted's own transports.
"""

from __future__ import annotations

import errno
import select
import weakref
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure

from connscale.compat.epoll import (
    is_epoll_reactor,
    reactor_dispatch,
    reactor_epoll,
    reactor_selectables,
    replace_main_loop,
)
from connscale.compat.epoll import replace_poll as _replace_poll

log = Logger(namespace="connscale.dispatch")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP

#: Events taken per `epoll_wait`. Level-triggered, so what is left is returned
#: by the next call; a bounded batch keeps timers (ping sends, timeouts) on time
#: and the events buffer small (Twisted asks for one slot per selectable).
MAX_EVENTS = 512

_loops: weakref.WeakKeyDictionary[Any, Loop] = weakref.WeakKeyDictionary()


class Loop:
    """fd -> handler for connscale's sockets, sharing the reactor's epoll.

    A handler has `on_event(events)` and `fail(failure)`; it registers with
    `add`, changes its interest with `modify`, and removes itself with
    `forget` right before it closes its fd (closing removes the fd from epoll,
    so no `epoll_ctl` is spent on it).
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.epoll = reactor_epoll(reactor)
        self.handlers: dict[int, Any] = {}
        self._soon: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._twisted = reactor_selectables(reactor)
        self._twisted_dispatch = reactor_dispatch(reactor)
        poll_once = self._make_poll()
        _replace_poll(reactor, lambda reactor, timeout: poll_once(timeout))
        # Timers only when one is due: a turn goes from epoll to the handlers.
        replace_main_loop(reactor, poll_once)

    def add(self, fd: int, handler: Any, events: int) -> None:
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self.epoll.modify(fd, events)

    def hand_over(self, fd: int, handler: Any, events: int) -> None:
        """`handler` takes `fd` over, now interested in `events` (a connect that completed)."""
        self.epoll.modify(fd, events)
        self.handlers[fd] = handler

    def forget(self, fd: int) -> None:
        self.handlers.pop(fd, None)

    def soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Call `fn(*args)` after the current event, before waiting again."""
        self._soon.append((fn, args))

    def drain(self) -> None:
        """Handle what is ready now on connscale's own sockets, without waiting.

        Called between the sends of a burst of pings, so that pongs which
        arrive meanwhile are read (and timed) then, not after the whole burst.
        Twisted's own selectables wait for the next regular turn: events are
        level-triggered, so nothing is lost.
        """
        try:
            events = self.epoll.poll(0, MAX_EVENTS)
        except OSError:
            return
        # The same dispatch as `_make_poll`'s, written twice on purpose: both loops run per
        # event of every pong, and a shared helper would cost a call per turn on that path
        # (the poll's loop also serves Twisted's selectables, which this one leaves).
        get = self.handlers.get
        for fd, event in events:
            handler = get(fd)
            if handler is not None:
                try:
                    handler.on_event(event)
                except Exception:
                    handler.fail(Failure())

    def run_soon(self) -> None:
        while self._soon:
            batch, self._soon = self._soon, []
            for fn, args in batch:
                try:
                    fn(*args)
                except Exception:
                    log.failure("deferred transport work failed")

    def _make_poll(self) -> Callable[[float | None], None]:
        handlers = self.handlers
        twisted = self._twisted
        dispatch = self._twisted_dispatch
        poll = self.epoll.poll

        def do_poll(timeout: float | None) -> None:
            if self._soon:
                # Asked for by a timer or by Twisted's own dispatch: done now,
                # and the wait is skipped so that timers this work set (a
                # replacement's backoff) are seen by the reactor at once.
                self.run_soon()
                timeout = 0
            try:
                events = poll(-1 if timeout is None else timeout, MAX_EVENTS)
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            # Inlined, as in `drain` (see there): the hot loop of every ping and pong.
            get = handlers.get
            for fd, event in events:
                handler = get(fd)
                if handler is not None:
                    try:
                        handler.on_event(event)
                    except Exception:
                        # A protocol's bug ends its own connection, as in Twisted.
                        handler.fail(Failure())
                    continue
                selectable = twisted.get(fd)
                if selectable is not None:
                    try:
                        dispatch(selectable, fd, event)
                    except Exception:
                        log.failure("unhandled error dispatching an event for fd {fd}", fd=fd)
            if self._soon:
                self.run_soon()

        return do_poll


def loop_for(reactor: Any) -> Loop | None:
    """This reactor's `Loop` (installed on first use), or None when the
    reactor is not an epoll reactor: callers then use Twisted's own transports."""
    loop = _loops.get(reactor)
    if loop is None and is_epoll_reactor(reactor):
        loop = _loops[reactor] = Loop(reactor)
    return loop


def direct_dispatch(reactor: Any) -> bool:
    """Install connscale's loop on this reactor if it is an epoll reactor."""
    return loop_for(reactor) is not None
