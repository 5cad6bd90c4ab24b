"""The login throttle: guesses per peer, and a log of refusals that speaks once per interval.

It counts guesses, not connections: a peer (`peer.peer_key`: the address, and
on loopback the local user owning the socket) has one exchange in flight at a
time (`acquire` waits its turn; a fleet logging in at once from one address
queues), and each that does not end in a proved password counts as a failed
login (`release`), so parallel connections cannot get past it. After
`THROTTLE_FAILURES` in `THROTTLE_WINDOW` seconds that peer must wait
(`blocked_for`): the login (`login.LoginGate`) refuses it with `LoginThrottled`,
which says how long to wait and which every peer of ours retries with backoff.
The throttle slows a guesser and shuts no one out for good, and a local user
cannot throttle another user's logins at all.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

log = Logger(namespace="connscale.control.login")

THROTTLE_FAILURES = 5
THROTTLE_WINDOW = 10.0
#: At most one log line about refused connections per this many seconds.
LOG_INTERVAL = 10.0
#: Peers the throttle remembers (oldest forgotten first).
MAX_TRACKED = 4096
#: Logins of one peer waiting for their turn (its one exchange in flight) at most.
MAX_WAITING = 256


class TooManyWaiting(Exception):
    """More than MAX_WAITING logins of one peer wait for their turn (the login answers it
    as `LoginThrottled`)."""


class LoginThrottle:
    """Guesses per peer, and a log that speaks once per interval."""

    def __init__(self, clock: IReactorTime, failures: int = THROTTLE_FAILURES, window: float = THROTTLE_WINDOW,
                 log_interval: float = LOG_INTERVAL) -> None:
        self.clock = clock
        self.failures = failures
        self.window = window
        self.log_interval = log_interval
        self._recent: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._last_reason = ""
        self._flush: Any = None
        self._logged_at = -float("inf")
        #: Every refusal so far, by kind (tests and stats read it).
        self.refused: collections.Counter[str] = collections.Counter()
        #: Peers with an exchange in flight, and the starts waiting for their turn.
        self._busy: set[str] = set()
        self._waiting: dict[str, collections.deque[defer.Deferred[None]]] = {}

    def blocked_for(self, peer: str) -> float:
        """Seconds this peer must wait before it may try again (0: it may)."""
        times = self._recent.get(peer)
        if not times or len(times) < self.failures:
            return 0.0
        left = times[0] + self.window - self.clock.seconds()
        return max(0.0, left)

    def _count(self, peer: str) -> None:
        times = self._recent.pop(peer, None) or collections.deque(maxlen=self.failures)
        times.append(self.clock.seconds())
        self._recent[peer] = times
        while len(self._recent) > MAX_TRACKED:
            self._recent.popitem(last=False)

    def acquire(self, peer: str) -> defer.Deferred[None]:
        """The peer's turn to make a guess: one exchange in flight per peer, the others wait
        their turn (at most MAX_WAITING; beyond, TooManyWaiting). Parallel connections cannot
        get past the failure count, and a fleet logging in at once from one address queues."""
        waiting = self._waiting.setdefault(peer, collections.deque())
        if peer not in self._busy:
            self._busy.add(peer)
            return defer.succeed(None)
        if len(waiting) >= MAX_WAITING:
            return defer.fail(TooManyWaiting(f"too many logins at once from {peer}; try again in 1 s"))
        turn: defer.Deferred[None] = defer.Deferred()
        waiting.append(turn)
        return turn

    def release(self, peer: str, failed: bool) -> None:
        """The peer's exchange in flight ended (`failed`: without proving the password)."""
        if failed:
            self._count(peer)
        waiting = self._waiting.get(peer)
        if waiting:
            waiting.popleft().callback(None)
            return
        self._busy.discard(peer)
        self._waiting.pop(peer, None)

    def failed(self, peer: str, reason: str) -> None:
        """A refused login whose guess (if any) was counted already."""
        self.refuse(peer, "login", reason)

    def refuse(self, peer: str, kind: str, reason: str) -> None:
        """Count a refused connection; logged with the others at the next interval."""
        self.refused[kind] += 1
        self._unlogged[peer] += 1
        self._last_reason = f"{kind}: {reason}"
        now = self.clock.seconds()
        if now - self._logged_at >= self.log_interval:
            self._log()
        elif self._flush is None or not self._flush.active():
            self._flush = self.clock.callLater(self._logged_at + self.log_interval - now, self._log)

    def _log(self) -> None:
        self._flush = None
        if not self._unlogged:
            return
        self._logged_at = self.clock.seconds()
        total = sum(self._unlogged.values())
        hosts = ", ".join(f"{h} x{n}" for h, n in self._unlogged.most_common(5))
        more = len(self._unlogged) - 5
        log.warn(
            "control: refused {total} connection(s) in the last {interval:g} s from {hosts}{more} (last: {reason})",
            total=total, interval=self.log_interval, hosts=hosts, more=f" and {more} more" if more > 0 else "",
            reason=self._last_reason,
        )
        self._unlogged.clear()
