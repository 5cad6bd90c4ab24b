"""Leaner event dispatch for the epoll reactor of a connscale process.

`EPollReactor.doPoll` wraps every socket event in `log.callWithLogger`
(a `logPrefix()` call and a log-context push) before `_doReadOrWrite`. With
tens of thousands of connections each waking once per interval, that wrapper
is 10-20 % of a worker's CPU (bench/cpu_per_rtt.py). We install a dispatch
loop without it on *our* reactor instance only: `_doReadOrWrite` already turns
a failing handler into that connection's `connectionLost`, and anything that
escapes is still logged.
"""

from __future__ import annotations

import errno
import types
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="connscale.dispatch")


def _do_poll(self: Any, timeout: float | None) -> None:
    if timeout is None:
        timeout = -1
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    handle = self._doReadOrWrite
    lookup = self._selectables.get
    for fd, event in events:
        selectable = lookup(fd)
        if selectable is not None:
            try:
                handle(selectable, fd, event)
            except Exception:
                log.failure("unhandled error dispatching an event for fd {fd}", fd=fd)


def direct_dispatch(reactor: Any) -> bool:
    """Use the lean loop on this reactor if it is an epoll reactor."""
    from twisted.internet.epollreactor import EPollReactor

    if not isinstance(reactor, EPollReactor):
        return False
    method = types.MethodType(_do_poll, reactor)
    reactor.doPoll = method
    reactor.doIteration = method
    return True
