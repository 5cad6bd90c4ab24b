"""RLIMIT_NOFILE: raising it, and how many connections one process can hold.

Reactor-free and never raising: a refused setrlimit becomes a message for the
operator, never a crash.
"""

from __future__ import annotations

import math
import resource
from collections.abc import Callable

import attrs
from twisted.logger import Logger

from connscale.host.sysctl import read_nr_open

log = Logger(namespace="connscale")

# Used when the hard limit is "unlimited": asking for RLIM_INFINITY is refused by
# Linux for RLIMIT_NOFILE, and a soft limit of millions makes some libraries that
# iterate over every possible fd (e.g. closing fds before exec) painfully slow.
NOFILE_CEILING = 1048576

# File descriptors the process needs besides connections: stdio, listening
# sockets, log files, the control channel, pipes to workers, psutil's /proc reads.
FD_RESERVE = 100


@attrs.frozen
class NofileResult:
    """Outcome of raise_nofile; `soft` is what the process actually has now."""

    before_soft: int
    soft: int
    hard: int
    raised: bool
    error: str | None = None


def raise_nofile(
    getrlimit: Callable[[int], tuple[int, int]] = resource.getrlimit,
    setrlimit: Callable[[int, tuple[int, int]], None] = resource.setrlimit,
    read_nr_open: Callable[[], int | None] = read_nr_open,
) -> NofileResult:
    """Raise the RLIMIT_NOFILE soft limit as far as the hard limit allows.

    Every connection costs a file descriptor and the usual soft limit (1024)
    is far below what a load test needs; raising soft up to hard needs no
    privilege. Never raises: a refusal is recorded in `error` so the caller
    can report it alongside the resulting connection budget.
    """
    try:
        before_soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError) as e:
        return NofileResult(0, 0, 0, raised=False, error=f"getrlimit(RLIMIT_NOFILE) failed: {e}")

    if hard == resource.RLIM_INFINITY:
        # The kernel refuses an infinite NOFILE; nr_open is the real ceiling.
        nr_open = _safe_call(read_nr_open)
        target = min(nr_open, NOFILE_CEILING) if nr_open and nr_open > 0 else NOFILE_CEILING
    else:
        target = hard

    if before_soft == resource.RLIM_INFINITY or before_soft >= target:
        return NofileResult(before_soft, before_soft, hard, raised=False)

    try:
        setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as e:
        return NofileResult(
            before_soft,
            before_soft,
            hard,
            raised=False,
            error=f"setrlimit(RLIMIT_NOFILE, ({target}, {hard})) failed: {e}",
        )
    return NofileResult(before_soft, target, hard, raised=True)


def _safe_call(fn: Callable[[], int | None]) -> int | None:
    # The reader is injectable, so guard the "never raises" promise here too.
    try:
        return fn()
    except Exception:
        return None


#: Most worker processes one agent or hub runs (also config's upper bound).
MAX_WORKERS = 256

#: Fill a worker's fd budget only this far: the rest absorbs sockets in
#: TIME_WAIT-free churn, the PB pipe, logs and the odd reconnect.
FILL = 0.95


def per_worker(budget: int) -> int:
    """Connections the controller gives one worker whose fd budget is `budget`."""
    return max(1, int(budget * FILL))


def tuple_cap(per_route_max: int, ephemeral: int) -> int:
    """Most connections one (source IP, server IP:port) tuple may carry in total:
    the configured cap, and never more than the ephemeral port range."""
    return max(1, min(per_route_max, ephemeral))


def connection_budget(soft: int, reserve: int = FD_RESERVE) -> int:
    """Connections one process can hold under a soft NOFILE limit of `soft`."""
    return max(0, soft - reserve)


def budget_advice(wanted: int, budget: int, hard: int) -> str | None:
    """One sentence explaining how to get `wanted` connections when the fd budget is short."""
    if wanted <= budget:
        return None
    if budget > 0:
        workers = math.ceil(wanted / budget)
        more_workers = f"run more worker processes (--workers {workers} or more)"
    else:
        more_workers = "run more worker processes (--workers N)"
    return (
        f"this process can hold only {budget} connections (RLIMIT_NOFILE hard limit {hard}), "
        f"not the {wanted} wanted: {more_workers}, "
        "or raise the hard limit (ulimit -Hn, LimitNOFILE= in systemd, "
        "/etc/security/limits.conf) if the system allows."
    )


def prepare_fds(wanted: int, prog: str) -> tuple[NofileResult, int]:
    """Raise RLIMIT_NOFILE to the hard limit and log this process's budget."""
    nofile = raise_nofile()
    budget = connection_budget(nofile.soft)
    if nofile.error:
        log.warn("{prog}: could not raise RLIMIT_NOFILE: {error}", prog=prog, error=nofile.error)
    log.info(
        "{prog}: RLIMIT_NOFILE soft={soft} hard={hard}; this process can hold {budget} connections",
        prog=prog,
        soft=nofile.soft,
        hard=nofile.hard,
        budget=budget,
    )
    advice = budget_advice(wanted, budget, nofile.hard)
    if advice:
        log.warn("{prog}: {advice}", prog=prog, advice=advice)
    return nofile, budget
