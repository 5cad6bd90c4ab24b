"""Worker rows: one worker process as its supervisor reports it, and a worker that died.

A supervisor (the hub's for server workers, each agent's for its client workers)
describes every worker it runs as a `WorkerRow` once a second; the rows cross PB
inside an agent's report and land in every timeline line and the live stats
(`metrics.records.Stats`). A worker that ended without being asked to is a
`WorkerLoss`. Both live here, below every layer that reads them (the timeline,
the diagnosis, the live view), and are re-exported by `procs.records` for the
supervisors that make them.

A row's `resources` and `load` stay bounded plain data on the wire (`loose`): a
hub steering 500 agents checks 25,000 rows a second (bench/fleet.py), and a
nested record per reading would cost it several times the check. Their readings
are read here and only here, through the row's properties (`cpu_s`, `rss_bytes`,
`cpu`, `lag_ms_max`, ...), so no reader spells their keys.
"""

from __future__ import annotations

from typing import Any

import attrs

from connscale.records.base import Record, boolean, choice, field, integer, loose, number, optional, text

#: One worker never holds more than this (RLIMIT_NOFILE's hard ceiling is far below).
MAX_WORKER_TARGET = 1 << 24
#: Worker losses kept with their details (the count, `lost_workers`, goes on).
MAX_LOSSES = 64
#: The name of the hub as the "agent" of server workers.
HUB = "hub"


#: Exact types a reading may have (`loose` let booleans and text through too: not a number here).
_NUMERIC = frozenset({int, float})


def _number(data: Any, key: str) -> float | None:
    # Read ~400 times a line at a million (two views of 106 rows): the cheapest check that holds.
    value = data.get(key)
    return value if type(value) in _NUMERIC else None


def cpu_seconds(resources: Any) -> float | None:
    """User + system CPU seconds of a process's resources (`host.resources.process_resources`:
    a worker row's, an agent's or an observer's report's, the hub's own), None without a sample."""
    user = _number(resources, "cpu_user_s")
    return None if user is None else user + (_number(resources, "cpu_system_s") or 0.0)


def rss_of(resources: Any) -> float | None:
    """The RSS in bytes of a process's resources, None without a sample."""
    return _number(resources, "rss_bytes")


@attrs.frozen
class WorkerRow(Record):
    """One worker as its supervisor reports it."""

    index: int = field(integer(0, 4096), doc="its slot (0-based; labels count from 1)")
    pid: int | None = field(optional(integer(1)), default=None, doc="its process id (null before it started)")
    alive: bool = field(boolean, default=False, doc="its process runs")
    target: int = field(integer(0, MAX_WORKER_TARGET), default=0, doc="connections ordered (client workers)")
    open: int = field(integer(0, MAX_WORKER_TARGET), default=0, doc="connections it holds")
    budget: int = field(integer(0, 1 << 30), default=0, doc="connections its fd limit allowed at start")
    restarts: int = field(integer(0), default=0, doc="times its slot was restarted")
    resources: dict[str, Any] = field(loose(), factory=dict,
                                      doc="rss_bytes, cpu_user_s, cpu_system_s, threads of its process")
    load: dict[str, Any] = field(loose(), factory=dict,
                                 doc="its own probe: cpu (share of a core), lag_ms_max, lag_ms_mean, nofile, "
                                     "gc_ms (CPU ms its garbage collector took), gc_full (full collections)")
    silent_s: float | None = field(optional(number(0, 1e9)), default=None,
                                   doc="seconds since it last answered its supervisor (null when not alive)")
    stopped: bool | None = field(optional(boolean), default=None,
                                 doc="for a silent worker: stopped by the kernel (true) or running (false)")

    def to_wire(self) -> dict[str, object]:
        # The bulk of a line (a million's has 106 rows), spelt out: its readings are plain
        # data already (`loose` checked them), so they need no walk through `_plain`.
        return {"index": self.index, "pid": self.pid, "alive": self.alive, "target": self.target, "open": self.open,
                "budget": self.budget, "restarts": self.restarts, "resources": self.resources, "load": self.load,
                "silent_s": self.silent_s, "stopped": self.stopped}

    @property
    def cpu_s(self) -> float | None:
        """CPU seconds its process used so far (user + system), None without a sample."""
        return cpu_seconds(self.resources)

    @property
    def rss_bytes(self) -> float | None:
        return rss_of(self.resources)

    @property
    def cpu(self) -> float | None:
        """Its share of one core over its last report, from its own probe."""
        return _number(self.load, "cpu")

    @property
    def lag_ms_max(self) -> float | None:
        return _number(self.load, "lag_ms_max")

    @property
    def lag_ms_mean(self) -> float | None:
        return _number(self.load, "lag_ms_mean")

    @property
    def nofile(self) -> int | None:
        value = _number(self.load, "nofile")
        return None if value is None else int(value)

    @property
    def gc_ms(self) -> float | None:
        """CPU milliseconds its garbage collector took over its last report (None: not reported)."""
        return _number(self.load, "gc_ms")

    @property
    def gc_full(self) -> int | None:
        """Full (generation 2) collections over its last report (None: not reported)."""
        value = _number(self.load, "gc_full")
        return None if value is None else int(value)


@attrs.frozen
class WorkerLoss(Record):
    """A worker that ended without being asked to, and what went with it.

    `how` is in words ("was killed by signal 9 (SIGKILL)", "exited with status 1",
    "was killed by its supervisor as hung (no answer for 31 s)"), so a summary can say it as is.
    The hub adds `agent` (a client worker's) and `elapsed_s` (on its own clock) as it learns of it.
    """

    worker: str = field(text(120), doc="its name, e.g. hub-server-worker-1")
    side: str = field(choice("client", "server"), doc="client or server")
    pid: int | None = field(optional(integer(1)), default=None, doc="its process id")
    how: str = field(text(200), default="ended", doc="how it ended, in words")
    connections: int = field(integer(0, MAX_WORKER_TARGET), default=0,
                             doc="connections it held at its last snapshot, lost with it (counted as worker_lost)")
    t: float = field(number(0, 1e12), default=0.0, doc="when, on its supervisor's clock")
    agent: str = field(text(255), default="", doc="the agent of a client worker (empty for a server worker)")
    elapsed_s: float | None = field(optional(number(-1e9, 1e12)), default=None,
                                    doc="when, in seconds since the hub started")


@attrs.frozen
class WorkerRef:
    """A worker of a stats record with the side and agent it belongs to (`Stats.workers()`)."""

    side: str
    agent: str
    row: WorkerRow

    @property
    def label(self) -> str:
        """What plots and tables call it: "server #1", "local #2" (by index, never by pid)."""
        return f"server #{self.row.index + 1}" if self.side == "server" else f"{self.agent} #{self.row.index + 1}"

    @property
    def name(self) -> str:
        """Its process's name: "hub-server-worker-1", "local-client-worker-2"."""
        return f"{self.agent}-{self.side}-worker-{self.row.index + 1}"
