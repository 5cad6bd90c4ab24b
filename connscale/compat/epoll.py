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
    return reactor._poller  # type: ignore[no-any-return]


def reactor_selectables(reactor: Any) -> dict[int, Any]:
    """fd -> Twisted selectable (`EPollReactor._selectables`)."""
    return reactor._selectables  # type: ignore[no-any-return]


def reactor_dispatch(reactor: Any) -> Callable[[Any, int, int], None]:
    """Twisted's handling of one event for one of its selectables
    (`_PollLikeMixin._doReadOrWrite(selectable, fd, event)`)."""
    return reactor._doReadOrWrite  # type: ignore[no-any-return]


def replace_poll(reactor: Any, poll: Callable[[Any, float | None], None]) -> None:
    """Make `poll(reactor, timeout)` this reactor instance's `doIteration`.

    `ReactorBase.mainLoop` calls `doIteration(timeout)` once per turn, after
    running due timers; `EPollReactor` aliases it to `doPoll`. Only this
    instance changes, never the class.
    """
    method = types.MethodType(poll, reactor)
    reactor.doPoll = method
    reactor.doIteration = method
