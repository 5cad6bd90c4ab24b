"""The controller's numbers at one moment: the live stats, a timeline line, an incident.

`Stats` is one record for two uses. What the hub's `stats()` answers at any moment
(`ctl stats`, the console, `/metrics`, and `connscale run` and `ctl watch` through
`stats_packed`) is a `Stats`; one line of `timeline.jsonl` is the same record with
the fields of its second filled in (`t`, `rtt_hist`, `events`, `poll_ms`, and only
the incidents and worker losses of that second). Every reader of either uses its
fields, and the three questions each reader used to answer its own way are
answered here once: `failures()`, `target` and `worker_rows()`.

Wire and file form: `to_wire()` / `from_wire()` (the strict parsers of
`records.base`: a malformed peer answer or line is one `RecordError` line), and
`to_json()` / `from_json()` for a line of text. Every record carries `schema`
(`SCHEMA`). Lines written before the field existed (schema 1, today's format
otherwise) read as they are: a missing `schema` is 1, an incident's kernel changes
that rode in `kernel` as `<counter>_delta` are split into `kernel_delta`, and a
side without workers in `load` that was written `{}` reads as None. A line from a
newer connscale is read as far as its fields are known here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs
from hdrh.histogram import HdrHistogram

from connscale.records.base import (
    Record,
    RecordError,
    boolean,
    field,
    integer,
    mapping,
    nested,
    number,
    optional,
    seq,
    text,
)
from connscale.host.observed import MAX_TARGET_EVENTS, ObservedEvent, ObserverRow
from connscale.metrics.cost import Cost
from connscale.metrics.histograms import Percentiles, decode_histogram
from connscale.metrics.snapshot import Snapshot, snapshot_from_wire
from connscale.metrics.workers import HUB, MAX_LOSSES, WorkerLoss, WorkerRef, WorkerRow

#: The version of the records written now. 1: lines and summaries written before
#: records carried one (read as they are, see the module doc).
SCHEMA = 2

#: Bounds of what one record may hold (far above what a run makes).
MAX_AGENTS = 4096
MAX_WORKERS = 4096
MAX_INCIDENTS = 64
MAX_EVENTS = 10_000

#: Parsers the run's records share (diagnose.records too).
COUNT = integer(0, 1 << 62)
FAILURES = mapping(text(128), COUNT, 4096)
TEXTS = seq(text(4096), 512)
SCHEMA_FIELD = integer(1, 1 << 16)


def with_schema(data: object) -> object:
    """A record's data as read: without `schema`, it was written before records had one (1)."""
    if isinstance(data, Mapping) and "schema" not in data:
        return {**data, "schema": 1}
    return data


# ----------------------------------------------------------------------------- the kernel

_KERNEL_INT = optional(integer(0, 1 << 62))


@attrs.frozen
class KernelCounters(Record):
    """The hub host's kernel counters (`host.kernel.kernel_snapshot`); None: not available here.

    The field names are the snapshot's keys (tests/test_records.py holds the two together)."""

    tcp_inuse: int | None = field(_KERNEL_INT, default=None, doc="TCP sockets in use (sockstat)")
    tcp_tw: int | None = field(_KERNEL_INT, default=None, doc="TCP sockets in TIME_WAIT")
    tcp_orphan: int | None = field(_KERNEL_INT, default=None, doc="orphaned TCP sockets")
    tcp_mem_pages: int | None = field(_KERNEL_INT, default=None, doc="pages of TCP buffer memory")
    tcp_alloc: int | None = field(_KERNEL_INT, default=None, doc="TCP sockets allocated")
    sockets_used: int | None = field(_KERNEL_INT, default=None, doc="sockets of every kind")
    listen_overflows: int | None = field(_KERNEL_INT, default=None, doc="TcpExt ListenOverflows (cumulative)")
    listen_drops: int | None = field(_KERNEL_INT, default=None, doc="TcpExt ListenDrops (cumulative)")
    abort_on_overflow: int | None = field(_KERNEL_INT, default=None, doc="TcpExt TCPAbortOnOverflow (cumulative)")
    syn_retrans: int | None = field(_KERNEL_INT, default=None, doc="TcpExt TCPSynRetrans (cumulative)")
    tcp_timeouts: int | None = field(_KERNEL_INT, default=None, doc="TcpExt TCPTimeouts (cumulative)")
    syncookies_sent: int | None = field(_KERNEL_INT, default=None, doc="TcpExt SyncookiesSent (cumulative)")
    mem_available_bytes: int | None = field(_KERNEL_INT, default=None, doc="MemAvailable (/proc/meminfo)")

    #: The counters that only grow: their change over a span is evidence (`delta`).
    CUMULATIVE = ("listen_overflows", "listen_drops", "abort_on_overflow", "syn_retrans", "tcp_timeouts",
                  "syncookies_sent")

    def to_wire(self) -> dict[str, object]:
        # What this host cannot count is left out, not written as 0: "not available" is not "none".
        return {k: v for k, v in super().to_wire().items() if v is not None}

    def delta(self, since: KernelCounters) -> KernelCounters:
        """How much each cumulative counter grew since `since` (None where it did not, or is unknown)."""
        grown: dict[str, int] = {}
        for key in self.CUMULATIVE:
            now, then = getattr(self, key), getattr(since, key)
            if now is not None and then is not None and now > then:
                grown[key] = now - then
        return KernelCounters(**grown)


# ----------------------------------------------------------------------------- agents, load

@attrs.frozen
class AgentRow(Record):
    """One agent in a stats record, keyed by its name in `Stats.clients`."""

    connected: bool = field(boolean, default=False, doc="logged in to the hub now")
    target: int = field(COUNT, default=0, doc="connections ordered from it")
    open: int = field(COUNT, default=0, doc="connections its report says it holds")
    connecting: int = field(COUNT, default=0, doc="connects in flight")
    disconnects: int = field(COUNT, default=0, doc="times its session dropped")
    lost_reason: str = field(text(2000), default="", doc="why its last session ended (empty while connected)")
    failures: Mapping[str, int] = field(FAILURES, factory=dict, doc="its failures, phase:cause -> count")
    workers: tuple[WorkerRow, ...] = field(seq(nested(WorkerRow), MAX_WORKERS), default=(),
                                           doc="its client workers, as its report gave them (rows as in server_workers)")
    rate: float | None = field(optional(number(0, 1e9)), default=None, doc="connects per second asked of it")
    stale_s: float | None = field(optional(number(0, 1e9)), default=None,
                                  doc="0: its report is this second's; else the age in seconds of the report "
                                      "it is counted with (its answer is late); null before its first")
    host: str = field(text(255), default="", doc="its host: the clients: entry's host it was launched on, "
                                                 "else the host name it registered with")
    rtt_window_ms: Percentiles | None = field(optional(nested(Percentiles)), default=None,
                                              doc="p50, p90, p99, max (ms) of its RTTs in the last second "
                                                  "(line: its second's; null where none)")
    rtt_hist: str = field(text(8 * 2**20), default="",
                          doc="line: the HdrHistogram of its second's RTTs (empty when none): the line's "
                              "rtt_hist is every agent's added, so per-agent and merged percentiles are exact")

    def histogram(self) -> HdrHistogram | None:
        """Its RTT histogram of a line's second; None when it has none."""
        return decode_histogram(self.rtt_hist) if self.rtt_hist else None


@attrs.frozen
class WorkerCount(Record):
    """Worker processes per side."""

    server: int = field(integer(0, 1 << 20), default=0, doc="server workers of the hub")
    client: int = field(integer(0, 1 << 30), default=0, doc="client workers of every agent")


@attrs.frozen
class SideLoad(Record):
    """How busy one side's live workers were in the latest second."""

    cpu_max: float = field(number(0, 1e6), default=0.0, doc="the busiest worker's share of a core")
    cpu_total: float = field(number(0, 1e9), default=0.0, doc="cores the side's workers used together")
    lag_ms_max: float = field(number(0, 1e12), default=0.0, doc="the worst event-loop lag, ms")
    lag_ms_mean: float = field(number(0, 1e12), default=0.0, doc="the workers' mean loop lag, ms")
    saturated: int = field(integer(0, 1 << 30), default=0, doc="workers saturated (CPU or loop lag)")
    silent: int = field(integer(0, 1 << 30), default=0, doc="workers that stopped answering")
    worker: str = field(text(255), default="", doc="the busiest worker's name")


def _side_load(value: object) -> SideLoad | None:
    # A side without live workers was written `{}` before schema 2.
    if value is None or (isinstance(value, Mapping) and not value):
        return None
    return SideLoad.from_wire(value)


@attrs.frozen
class LoadSummary(Record):
    """The busiest worker per side, and whether connscale's own clients are the bottleneck now."""

    client: SideLoad | None = field(_side_load, default=None, doc="client workers (None: none alive)")
    server: SideLoad | None = field(_side_load, default=None, doc="server workers (None: none alive)")
    measuring_side_saturated: bool = field(boolean, default=False,
                                           doc="client workers saturated: RTT and ramp rate are connscale's")


# ----------------------------------------------------------------------------- incidents

@attrs.frozen
class IncidentWorker(Record):
    """One of the busiest workers as an incident snapshotted it."""

    side: str = field(text(16), doc="client or server")
    agent: str = field(text(255), doc="its agent (hub for a server worker)")
    index: int = field(integer(0, 4096), doc="its slot")
    pid: int | None = field(optional(integer(1)), default=None, doc="its process id")
    open: int = field(COUNT, default=0, doc="connections it held")
    cpu: float | None = field(optional(number(0, 1e6)), default=None, doc="share of a core")
    lag_ms_max: float | None = field(optional(number(0, 1e12)), default=None, doc="worst loop lag, ms")
    lag_ms_mean: float | None = field(optional(number(0, 1e12)), default=None, doc="mean loop lag, ms")
    nofile: int | None = field(optional(integer(-1, 1 << 40)), default=None, doc="its RLIMIT_NOFILE")
    silent_s: float | None = field(optional(number(0, 1e12)), default=None, doc="seconds without an answer")
    alive: bool = field(boolean, default=True, doc="its process ran")


@attrs.frozen(kw_only=True)
class Incident(Record):
    """The moment a run met a wall, as the hub's detector snapshotted it (`diagnose.incidents`)."""

    t: float | None = field(optional(number(0, 1e12)), default=None, doc="Unix time of the second it opened")
    elapsed_s: float = field(number(-1e9, 1e12), doc="seconds since the hub started")
    trigger: str = field(text(32), doc="failures, ramp_behind, measuring_side, ghosts or observer")
    wall: str = field(text(32), doc="the wall's id (see the table of walls)")
    side: str = field(text(32), default="", doc="client, server, host, run or connscale")
    headline: str = field(text(2000), default="", doc="the wall in one line")
    evidence: tuple[str, ...] = field(TEXTS, default=(), doc="what was seen, in words with the numbers")
    fix: tuple[str, ...] = field(TEXTS, default=(), doc="what lifts it")
    open: int = field(COUNT, default=0, doc="connections the clients held")
    server_open: int = field(COUNT, default=0, doc="connections the servers held")
    target: int = field(COUNT, default=0, doc="connections ordered (`Stats.target`)")
    connecting: int = field(COUNT, default=0, doc="connects in flight")
    connect_rate: float = field(number(0, 1e12), default=0.0, doc="connects per second in that second")
    asked_rate: float = field(number(0, 1e12), default=0.0, doc="connects per second asked")
    ghosts: int = field(COUNT, default=0, doc="connections the clients hold that no server holds")
    ghosts_max: int = field(COUNT, default=0, doc="the most ghosts in the last seconds")
    failures: Mapping[str, int] = field(FAILURES, factory=dict,
                                        doc="failures in the last seconds, phase:cause (server:phase:cause)")
    kernel: KernelCounters = field(nested(KernelCounters), factory=KernelCounters, doc="kernel counters then")
    kernel_delta: KernelCounters = field(nested(KernelCounters), factory=KernelCounters,
                                         doc="how much the cumulative ones grew in the last seconds")
    workers: tuple[IncidentWorker, ...] = field(seq(nested(IncidentWorker), 2 * MAX_WORKERS), default=(),
                                                doc="the busiest workers of each side")
    rtt_window_ms: Percentiles | None = field(optional(nested(Percentiles)), default=None,
                                              doc="RTT of that second")

    @classmethod
    def from_wire(cls, data: object) -> Incident:
        if isinstance(data, Mapping) and "kernel_delta" not in data and isinstance(data.get("kernel"), Mapping):
            # Schema 1 kept the changes in `kernel` as `<counter>_delta`.
            kernel = data["kernel"]
            data = {**data, "kernel": {k: v for k, v in kernel.items() if not str(k).endswith("_delta")},
                    "kernel_delta": {str(k)[:-6]: v for k, v in kernel.items() if str(k).endswith("_delta")}}
        return super().from_wire(data)


# ----------------------------------------------------------------------------- the record

def _side(value: object) -> Snapshot:
    return snapshot_from_wire(value)


_SIDE_DOC = ("counters of the {} side, cumulative: open, opened, closed, pings, pongs, skipped, resumed (TLS "
             "handshakes that resumed a session), failures (phase:cause -> count), protocol (violations by kind), "
             "failure_total")


@attrs.frozen(kw_only=True)
class Stats(Record):
    """The controller's numbers at one moment; with its second's fields, one timeline line (module doc)."""

    schema: int = field(SCHEMA_FIELD, default=SCHEMA, doc="the version of this record's form (1: written before it had one)")
    t: float | None = field(optional(number(0, 1e12)), default=None,
                            doc="line: Unix time of its second (when its questions went out)")
    elapsed_s: float = field(number(-1e9, 1e12), doc="seconds since the hub started")
    phase: str = field(text(64), default="",
                       doc="what the run was doing (setup, ramp:K, hold:K, final_hold, plateau:K, stop); a line's "
                           "second that saw the phase change counts as the ramp or stop side of it")
    client: Snapshot = field(_side, doc=_SIDE_DOC.format("client (every connected agent)"))
    server: Snapshot = field(_side, doc=_SIDE_DOC.format("server"))
    ghosts: int = field(COUNT, default=0, doc="connections clients believe open that no server holds (half-open); "
                                              "0 without a server of connscale's own")
    own_server: bool = field(boolean, default=True,
                             doc="the clients' server is connscale's own (false with client.url: someone else's, "
                                 "so `server` and `ghosts` count nothing; a line written before the field was "
                                 "always true)")
    clients: Mapping[str, AgentRow] = field(mapping(text(255), nested(AgentRow), MAX_AGENTS), factory=dict,
                                            doc="every agent the hub knows, by name, connected or not")
    stale: tuple[str, ...] = field(seq(text(255), MAX_AGENTS), default=(),
                                   doc="connected agents counted with an old report (their answer was late)")
    observers: Mapping[str, ObserverRow] = field(
        mapping(text(255), nested(ObserverRow), MAX_AGENTS), factory=dict,
        doc="every observer of the server under test (connscale observe) the hub knows, by name: its session, "
            "targets (processes, listeners), host (kernel counters, memory, conntrack), read_ms")
    target_events: tuple[ObservedEvent, ...] = field(
        seq(nested(ObservedEvent), MAX_TARGET_EVENTS), default=(),
        doc="observed servers that exited, restarted or were replaced (stats: so far; line: in its second): "
            "kind, label, pid, new_pid, name, observer, elapsed_s, text")
    workers: WorkerCount = field(nested(WorkerCount), factory=WorkerCount, doc="worker processes per side: server, client")
    server_workers: tuple[WorkerRow, ...] = field(seq(nested(WorkerRow), MAX_WORKERS), default=(),
                                                  doc="the hub's server workers")
    server_lost_workers: int = field(COUNT, default=0, doc="server workers lost so far")
    worker_losses: tuple[WorkerLoss, ...] = field(seq(nested(WorkerLoss), 4 * MAX_LOSSES), default=(),
                                                  doc="workers that died (stats: so far; line: in its second): worker, side, pid, how, "
                                                      "connections, t, agent, elapsed_s")
    rtt_ms: Percentiles = field(nested(Percentiles), factory=Percentiles,
                                doc="p50, p90, p99, max (ms) of every RTT since the hub started")
    rtt_window_ms: Percentiles | None = field(optional(nested(Percentiles)), default=None,
                                              doc="p50, p90, p99, max (ms) of the RTTs of one second: a line's own; "
                                                  "stats: the last line's (null where none)")
    window_elapsed_s: float | None = field(optional(number(-1e9, 1e12)), default=None,
                                           doc="stats: the elapsed_s of the line whose second rtt_window_ms is "
                                               "(null in a line, and before the first)")
    rtt_hist: str = field(text(8 * 2**20), default="",
                          doc="line: the merged HdrHistogram of its second's RTTs (empty when none)")
    handshake_ms: Percentiles = field(nested(Percentiles), factory=Percentiles,
                                      doc="p50, p90, p99, max (ms) of every TLS handshake the clients finished "
                                          "since the hub started (null without TLS)")
    handshake_hist: str = field(text(8 * 2**20), default="",
                                doc="line: the merged HdrHistogram of the TLS handshakes finished in its second "
                                    "(the clients' time from TCP connected to TLS ready; empty when none)")
    kernel: KernelCounters = field(nested(KernelCounters), factory=KernelCounters,
                                   doc="the hub host's kernel counters: sockstat (tcp_inuse, tcp_tw, ...), TcpExt "
                                       "(listen_overflows, listen_drops, ...), mem_available_bytes; a counter "
                                       "this host lacks is left out")
    load: LoadSummary = field(nested(LoadSummary), factory=LoadSummary,
                              doc="per side (client, server; null without live workers): cpu_max, cpu_total, lag_ms_max, "
                                  "lag_ms_mean, saturated, silent, worker (the busiest); and measuring_side_saturated")
    cost: Cost | None = field(optional(nested(Cost)), default=None,
                              doc="connscale's own CPU and RSS in the latest second: cores, rss_bytes, processes, "
                                  "by_kind (hub, server_workers, agents, client_workers, observers); null before "
                                  "the first line")
    incidents: tuple[Incident, ...] = field(seq(nested(Incident), MAX_INCIDENTS), default=(),
                                            doc="walls met (stats: so far; line: those opened in its second), each as "
                                                "snapshotted (see Why it stopped)")
    unjudged_failures: tuple[str, ...] = field(seq(text(200), 8192), default=(),
                                               doc="stats: failure keys no incident names yet (empty in a line)")
    events: tuple[str, ...] = field(seq(text(4096), MAX_EVENTS), default=(),
                                    doc="line: what happened in its second, in words")
    poll_ms: float | None = field(optional(number(0, 1e9)), default=None,
                                  doc="line: how long its poll round waited for the answers, ms")
    truncated: str = field(text(200), default="",
                           doc="stats: what the hub left out of this answer because it was too large to send "
                               "(empty: nothing)")

    # -- the wire and the file ------------------------------------------------------------
    @classmethod
    def from_wire(cls, data: object) -> Stats:
        return super().from_wire(with_schema(data))

    def to_wire(self) -> dict[str, object]:
        data = super().to_wire()
        data["client"] = self.client.counts()
        data["server"] = self.server.counts()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Stats:
        try:
            data = json.loads(line)
        except ValueError as e:
            raise RecordError(f"Stats: not JSON: {e}") from None
        return cls.from_wire(data)

    # -- the answers every reader shares ----------------------------------------------------
    def failures(self) -> dict[str, int]:
        """Failures of both sides so far: client ones as "phase:cause", server ones as "server:phase:cause"."""
        out = dict(self.client.failures)
        for key, n in self.server.failures.items():
            out[f"server:{key}"] = n
        return out

    @property
    def failure_total(self) -> int:
        return self.client.failure_total + self.server.failure_total

    def connected_agents(self) -> list[tuple[str, AgentRow]]:
        """The agents logged in now, by name."""
        return [(name, a) for name, a in sorted(self.clients.items()) if a.connected]

    @property
    def target(self) -> int:
        """Connections ordered at that moment: the targets of the connected agents only.

        A disconnected agent's target is pursued by nobody: its connections went with
        it (counted as lost), its last report is left out of the client totals, and the
        hub adopts and restores its target if it comes back. Counting it would show a
        target no one is asked to hold, and make every ramp after a lost agent look
        behind; the plots, the CSV, the live view and the ramp detector all use this."""
        return sum(a.target for _, a in self.connected_agents())

    @property
    def connecting(self) -> int:
        return sum(a.connecting for _, a in self.connected_agents())

    def worker_rows(self) -> tuple[WorkerRef, ...]:
        """Every worker the record describes as running for the run: the hub's server
        workers, then the client workers of each connected agent (by agent name); a
        disconnected agent's rows are its last report's, history like its target."""
        out = [WorkerRef("server", HUB, row) for row in self.server_workers]
        for name, agent in self.connected_agents():
            out += [WorkerRef("client", name, row) for row in agent.workers]
        return tuple(out)

    def histogram(self) -> HdrHistogram | None:
        """The RTT histogram of a line's second; None when it has none."""
        return decode_histogram(self.rtt_hist) if self.rtt_hist else None

    def handshake_histogram(self) -> HdrHistogram | None:
        """The TLS handshakes finished in a line's second; None when none did (or without TLS)."""
        return decode_histogram(self.handshake_hist) if self.handshake_hist else None

    @property
    def measuring_side_saturated(self) -> bool:
        return self.load.measuring_side_saturated

