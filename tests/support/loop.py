"""A private epoll reactor for in-process tests of real sockets on loopback.

The global reactor cannot be restarted, so each test gets its own
`EPollReactor` instance and turns it by hand (`spin`), waiting on a condition
with a deadline, never on a sleep.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import pytest


def spin(reactor: Any, until: Callable[[], object], timeout: float = 10.0, what: str = "the condition") -> None:
    """Run the reactor's turns (timers, then events) until `until()` is true."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        reactor.runUntilCurrent()
        t = reactor.timeout()
        reactor.doIteration(0.01 if t is None else min(t, 0.01))


def turns(reactor: Any, n: int = 5) -> None:
    """A few turns with nothing to wait for (to see that something does NOT happen)."""
    for _ in range(n):
        reactor.runUntilCurrent()
        reactor.doIteration(0.005)


@pytest.fixture
def reactor() -> Iterator[Any]:
    from twisted.internet.epollreactor import EPollReactor

    r = EPollReactor()
    yield r
    for call in r.getDelayedCalls():
        call.cancel()
    r.removeAll()
    if r.waker is not None:
        r.waker.connectionLost(None)
    from connscale.compat.epoll import reactor_epoll

    reactor_epoll(r).close()
