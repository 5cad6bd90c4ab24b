"""What a run concludes, as typed records: its explanation, a search's result, `summary.json`.

`Explanation` is what `diagnose.verdict` says of a run (printed as `why:`/`fix:`,
shown by the report); `SearchResult` with its `Plateau`s is what search mode found;
`Summary` is the whole of `summary.json`, which `connscale run` writes and the
report (and anything comparing runs) reads back. They live at the bottom of
`diagnose` because the report reads them and `app` writes them. Every record here
is a part of `summary.json`; a fleet's capacity check, which is not, has its records
beside the check (`diagnose.fleetcheck.FleetCheck`).

One path each way: `to_wire()`/`from_wire()` (strict, a problem is one
`RecordError` line). `summary.json` carries `schema` (`metrics.records.SCHEMA`);
one written before it had a schema (version 1) has the same fields and reads as
it is; fields a run did not get to write are their defaults. `read_summary`
reads the file of a run directory, and says in one line why it could not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from connscale.records.base import (
    Record,
    RecordError,
    boolean,
    choice,
    either,
    field,
    integer,
    mapping,
    nested,
    number,
    optional,
    seq,
    text,
)
from connscale.diagnose.gates import BaselineResult, ThresholdResult
from connscale.host.observed import MAX_TARGET_EVENTS, ObservedEvent
from connscale.metrics.cost import Cost
from connscale.metrics.handshakes import ConnectRate, HandshakeMs
from connscale.metrics.histograms import Percentiles
from connscale.metrics.phases import PhaseRtt
from connscale.metrics.records import (
    COUNT,
    FAILURES,
    SCHEMA,
    SCHEMA_FIELD,
    TEXTS,
    Incident,
    KernelCounters,
    WorkerCount,
    with_schema,
)
from connscale.metrics.workers import MAX_LOSSES, WorkerLoss

SUMMARY_FILE = "summary.json"

_WORDS = text(4096)
_TIME = number(0, 1e12)


@attrs.frozen
class Explanation(Record):
    """Why a run held or where it stopped, in words, with the fix (`diagnose.verdict`)."""

    headline: str = field(_WORDS, doc="what happened, in one line")
    wall: str = field(text(32), default="unknown", doc="the wall's id: none when the target was held")
    side: str = field(text(32), default="", doc="where the wall is: client, server, host, run, connscale")
    evidence: tuple[str, ...] = field(TEXTS, default=(), doc="what was seen, in words with the numbers")
    fix: tuple[str, ...] = field(TEXTS, default=(), doc="what lifts it, most direct first")
    measuring_side_saturated: bool = field(boolean, default=False,
                                           doc="connscale's own client workers were saturated at some point")


# ----------------------------------------------------------------------------- search mode

@attrs.frozen
class Cause(Record):
    """The wall behind a failed plateau: its id, side, one line and fix."""

    wall: str = field(text(32), doc="the wall's id")
    side: str = field(text(32), default="", doc="its side")
    headline: str = field(_WORDS, default="", doc="the wall in one line")
    fix: tuple[str, ...] = field(TEXTS, default=(), doc="what lifts it")

    @classmethod
    def of(cls, incident: Incident) -> Cause:
        return cls(incident.wall, incident.side, incident.headline, incident.fix)


@attrs.frozen
class Slo(Record):
    """What a plateau must meet to pass."""

    p99_ms: float = field(number(0, 1e9), default=100.0, doc="p99 RTT at most this, ms")
    timeout_rate: float = field(number(0, 1), default=0.001,
                                doc="no_answer_from_server per ping sent in the plateau, at most")
    failures: int = field(COUNT, default=0, doc="failures of any cause allowed in a plateau")
    saturated_s: int = field(COUNT, default=1,
                             doc="seconds of saturated client workers a plateau tolerates before it is no measurement")


@attrs.frozen(kw_only=True)
class Miss(Record):
    """One criterion of the SLO a plateau did not meet, with the number that broke it."""

    metric: str = field(text(32), doc="routes, open, failures, timeout_rate, p99_ms, pongs or saturated_s")
    value: float | None = field(optional(number(0, 1e18)), default=None, doc="what the plateau measured")
    limit: float | None = field(optional(number(0, 1e18)), default=None, doc="what the SLO (or the level) allowed")
    reason: str = field(_WORDS, default="", doc="the miss in words, as the plateau's reasons say it")


@attrs.frozen(kw_only=True)
class Plateau(Record):
    """One plateau of a search, as judged (`diagnose.search.judge`)."""

    index: int = field(integer(0, 1 << 20), doc="its number, from 1")
    level: int = field(COUNT, doc="connections it asked for")
    reached: bool = field(boolean, doc="the ramp reached the level")
    seconds: int = field(COUNT, default=0, doc="timeline seconds judged")
    open: int = field(COUNT, default=0, doc="open at its end")
    open_min: int = field(COUNT, default=0, doc="the fewest open during it")
    pings: int = field(COUNT, default=0, doc="pings sent during it")
    rtt_ms: Percentiles = field(nested(Percentiles), factory=Percentiles, doc="its RTT")
    failures: Mapping[str, int] = field(FAILURES, factory=dict, doc="failures during it")
    timeouts: int = field(COUNT, default=0, doc="pings that timed out")
    saturated_s: int = field(COUNT, default=0, doc="seconds connscale's client workers were saturated")
    passed: bool = field(boolean, default=False, doc="it met the SLO")
    reasons: tuple[str, ...] = field(TEXTS, default=(), doc="why it failed")
    cause: Cause | None = field(optional(nested(Cause)), default=None, doc="the wall behind a failure")
    misses: tuple[Miss, ...] = field(seq(nested(Miss), 16), default=(),
                                     doc="what it missed of the SLO, with the numbers (its reasons, one each)")


@attrs.frozen(kw_only=True)
class SearchResult(Record):
    """What a search found: the knee, the wall above it, the curve (`summary.json`'s `search`)."""

    knee: int = field(COUNT, doc="the largest count that met the SLO (0: none)")
    failed_at: int | None = field(optional(COUNT), default=None, doc="the lowest level above it that failed")
    cause: Cause | None = field(optional(nested(Cause)), default=None, doc="the wall at failed_at")
    headline: str = field(_WORDS, default="", doc="the result in one line")
    measuring_side_saturated: bool = field(boolean, default=False,
                                           doc="the failure above the knee was connscale's own")
    slo: Slo = field(nested(Slo), factory=Slo, doc="what each plateau had to meet")
    curve: tuple[Plateau, ...] = field(seq(nested(Plateau), 4096), default=(), doc="every plateau, in order")
    stopped: str = field(_WORDS, default="", doc="why the search stopped early (empty when it finished)")
    capacity: str = field(_WORDS, default="",
                          doc="the result as a capacity: largest count meeting the SLO: N (the next step, M, "
                              "failed on METRIC = VALUE)")


# ----------------------------------------------------------------------------- preflight

@attrs.frozen
class PreflightLimit(Record):
    """One limit of `connscale check`: how many connections it lets through, how to lift it."""

    key: str = field(text(64), doc="the limit's id")
    side: str = field(text(32), doc="client, server, host or run")
    capacity: int | None = field(optional(COUNT), doc="connections it allows (None: bounds no count)")
    detail: str = field(_WORDS, doc="the evidence, in words with the numbers")
    fix: str | None = field(optional(_WORDS), default=None, doc="the change that lifts it")
    warn: bool = field(boolean, default=False, doc="a risk worth saying even when it is not a count")
    binding: bool = field(boolean, default=False, doc="the limit that binds first")


@attrs.frozen(kw_only=True)
class Preflight(Record):
    """What `connscale check` said of the host before the run (`diagnose.capacity.Budget.to_dict`)."""

    target: int = field(COUNT, doc="connections wanted")
    reachable: int = field(COUNT, doc="connections the host reaches")
    ok: bool = field(boolean, doc="it reaches the target")
    host: str = field(text(255), default="", doc="the host judged")
    roles: str = field(text(16), default="both", doc="both, client or server")
    binding: str | None = field(optional(text(64)), default=None, doc="the key of the limit that binds first")
    limits: tuple[PreflightLimit, ...] = field(seq(nested(PreflightLimit), 256), default=(), doc="every limit")
    warnings: tuple[str, ...] = field(TEXTS, default=(), doc="risks, one line each")

    @property
    def binding_limit(self) -> PreflightLimit | None:
        return next((lim for lim in self.limits if lim.binding), None)


# ----------------------------------------------------------------------------- a fleet

@attrs.frozen(kw_only=True)
class AgentShare(Record):
    """One agent's share of a fleet run's target, and why it is that (`diagnose.fleetcheck.split`)."""

    agent: str = field(text(255), doc="the agent's name")
    host: str = field(text(255), default="", doc="its host")
    share: int = field(COUNT, doc="connections it is asked to hold")
    capacity: int | None = field(optional(COUNT), default=None, doc="connections its host reaches (None: unknown)")
    limit: str = field(text(64), default="", doc="the limit that binds first on its host")
    why: str = field(_WORDS, default="", doc="that limit's evidence, in words with the numbers")


@attrs.frozen(kw_only=True)
class AgentLost(Record):
    """An agent of the fleet lost during the run, with what went with it."""

    agent: str = field(text(255), doc="its name")
    host: str = field(text(255), default="", doc="its host")
    connections: int = field(COUNT, default=0, doc="connections it held at its last report, lost with it")
    reason: str = field(_WORDS, default="", doc="why its session ended, as the hub saw it")
    elapsed_s: float | None = field(optional(number(-1e9, 1e12)), default=None,
                                    doc="when the run saw it, in seconds since the run began")

    def describe(self) -> str:
        where = f" on {self.host}" if self.host else ""
        why = f" ({self.reason})" if self.reason else ""
        return f"agent {self.agent}{where} was lost with {self.connections:,} connections{why}"


@attrs.frozen(kw_only=True)
class AgentSummary(Record):
    """One agent's row of a run's summary, beside the merged figures."""

    agent: str = field(text(255), doc="its name")
    host: str = field(text(255), default="", doc="its host")
    share: int = field(COUNT, default=0, doc="connections it was asked to hold (its part of the split)")
    held: int = field(COUNT, default=0, doc="connections it held at the end of the final hold (0: it did not get there)")
    peak_open: int = field(COUNT, default=0, doc="the most connections it held")
    failures: Mapping[str, int] = field(FAILURES, factory=dict, doc="its failures by cause, phase:cause -> count")
    rate_asked: float | None = field(optional(number(0, 1e12)), default=None,
                                     doc="connects per second asked of it (its part of the fleet's rate)")
    rate_achieved: float | None = field(optional(number(0, 1e12)), default=None,
                                        doc="connects per second its ramp's steps really did")
    rtt_ms: Percentiles = field(nested(Percentiles), factory=Percentiles,
                                doc="its RTT over the final hold (else the whole run), from its own histograms")
    cpu_cores: float | None = field(optional(number(0, 1e6)), default=None,
                                    doc="cores its client workers used, mean over the final hold")
    lag_ms_max: float | None = field(optional(number(0, 1e12)), default=None,
                                     doc="the worst event-loop lag of its workers over the final hold, ms")
    saturated_s: int = field(COUNT, default=0, doc="seconds any of its workers was saturated (CPU or loop lag)")
    lost: bool = field(boolean, default=False, doc="it was lost during the run")


# ----------------------------------------------------------------------------- memory per connection

@attrs.frozen
class MemoryMoment(Record):
    """A second the memory table measures at (`diagnose.memory`)."""

    elapsed_s: float = field(number(-1e9, 1e12), default=0.0, doc="seconds since the hub started")
    open: int = field(COUNT, default=0, doc="connections the clients held then")
    phase: str = field(text(64), default="", doc="the run's phase then (empty for the baseline)")


@attrs.frozen
class MemoryRow(Record):
    """One quantity of the table: bytes per connection opened since the baseline."""

    key: str = field(text(64), doc="its id (server_rss, server_pss, connscale_server_rss, connscale_client_rss, "
                                   "kernel_slab, kernel_tcp_mem, kernel)")
    what: str = field(text(200), default="", doc="what it is, in words")
    kind: str = field(text(16), default="", doc="user or kernel")
    side: str = field(text(16), default="", doc="whose: server, client or host")
    opened: float | None = field(optional(number(-1e15, 1e15)), default=None,
                                 doc="bytes per connection once every connection was open (null: not measured)")
    pinging: float | None = field(optional(number(-1e15, 1e15)), default=None,
                                  doc="bytes per connection after they pinged, at the end of the final hold")

    def at(self, moment: str) -> float | None:
        """Its figure at "opened" or "pinging"."""
        return self.opened if moment == "opened" else self.pinging if moment == "pinging" else None


@attrs.frozen
class MemoryServer(Record):
    """The observed server the table speaks of."""

    label: str = field(text(128), doc="its label")
    pid: int | None = field(optional(integer(1)), default=None, doc="its process id")


@attrs.frozen(kw_only=True)
class MemoryTable(Record):
    """Memory per held connection, user and kernel, both ends (`diagnose.memory.memory_table`)."""

    baseline: MemoryMoment = field(nested(MemoryMoment), doc="the last second the observer read before the "
                                                             "first connection opened")
    opened: MemoryMoment | None = field(optional(nested(MemoryMoment)), default=None,
                                        doc="the first second at the peak count, before the final hold")
    pinging: MemoryMoment | None = field(optional(nested(MemoryMoment)), default=None,
                                         doc="the last second of the final hold (else the last before the stop)")
    server: MemoryServer | None = field(optional(nested(MemoryServer)), default=None,
                                        doc="the observed server")
    host: str = field(text(255), default="", doc="the observer's host")
    rows: tuple[MemoryRow, ...] = field(seq(nested(MemoryRow), 64), default=(), doc="one row per quantity measured")

    def row(self, key: str) -> MemoryRow | None:
        return next((r for r in self.rows if r.key == key), None)

    def workers_per_connection(self) -> SideBytes:
        """connscale's own workers' user memory per connection per side, once every connection
        was open (the run's peak): the one figure the summary's `mem_per_conn_bytes`, the
        report's and the verdict's tls: line give."""
        server, client = self.row("connscale_server_rss"), self.row("connscale_client_rss")
        return SideBytes(server.opened if server is not None else None, client.opened if client is not None else None)

    @property
    def moments(self) -> dict[str, MemoryMoment]:
        """"opened" and "pinging", those the table has."""
        return {name: m for name, m in (("opened", self.opened), ("pinging", self.pinging)) if m is not None}


# ----------------------------------------------------------------------------- TLS

@attrs.frozen
class SideBytes(Record):
    """Bytes per connection of connscale's workers, per side."""

    server: float | None = field(optional(number(-1e15, 1e15)), default=None, doc="the server workers'")
    client: float | None = field(optional(number(-1e15, 1e15)), default=None, doc="the client workers'")


@attrs.frozen
class TlsSummary(Record):
    """Which ends of a run spoke TLS."""

    server: str | None = field(optional(text(8)), default=None,
                               doc="connscale's server: auto (a certificate made for the run), cert, or null (no TLS)")
    client: bool = field(boolean, default=False, doc="the clients spoke TLS")
    resumed: int = field(COUNT, default=0, doc="handshakes that resumed a session")


# ----------------------------------------------------------------------------- the summary

@attrs.frozen
class PhaseSpan(Record):
    """A phase as the run entered it, on its own clock (Unix time)."""

    phase: str = field(text(64), doc="its name")
    start: float = field(_TIME, doc="when it began")
    end: float | None = field(optional(_TIME), default=None, doc="when it ended (None: it had not)")


@attrs.frozen(kw_only=True)
class Step(Record):
    """One ramp step as it happened: `rate_achieved` is what the ramp really did."""

    step: int = field(integer(0, 1 << 20), doc="its number, from 1")
    target: int = field(COUNT, doc="connections it ramped to")
    started: float = field(_TIME, doc="when (Unix time)")
    seconds: float | None = field(optional(number(0, 1e9)), default=None, doc="time to reach it (None: never)")
    rate_asked: float = field(number(0, 1e12), default=0.0, doc="connects per second asked")
    rate_achieved: float | None = field(optional(number(0, 1e12)), default=None, doc="connects per second reached")


@attrs.frozen(kw_only=True)
class Summary(Record):
    """`summary.json`: what a finished run says (written even when it failed)."""

    schema: int = field(SCHEMA_FIELD, default=SCHEMA, doc="the version of its form (1: written before it had one)")
    verdict: str = field(text(16), doc="held, failed (ramp mode) or knee (search mode)")
    reason: str = field(_WORDS, default="", doc="why it did not hold, in one line (empty when it did)")
    target: int = field(COUNT, doc="scenario.target")
    peak_open: int = field(COUNT, default=0, doc="the most connections open before the stop")
    held: int = field(COUNT, default=0,
                      doc="open at the end of the final hold if no failure happened during it, else 0 (search: the knee)")
    open_at_end: int = field(COUNT, default=0, doc="the clients' open count at the end")
    server_open_at_end: int | None = field(optional(COUNT), default=0,
                                           doc="the servers' open count at the end (null without a server of "
                                               "connscale's own: client.url)")
    ghosts: int = field(COUNT, default=0, doc="half-open connections at the end")
    failures: Mapping[str, int] = field(mapping(text(160), COUNT, 8192), factory=dict,
                                        doc="phase:cause -> count; server ones prefixed server:")
    counted_failures: int = field(COUNT, default=0, doc="failures counted toward scenario.max_failures")
    pings: int = field(COUNT, default=0, doc="pings sent")
    pongs: int = field(COUNT, default=0, doc="pongs received")
    rtt_ms: Percentiles = field(nested(Percentiles), factory=Percentiles,
                                doc="RTT over the whole run before it stopped, ramps included")
    rtt_final_hold_ms: Percentiles = field(nested(Percentiles), factory=Percentiles, doc="RTT over the final hold")
    rtt_holds_ms: Percentiles = field(nested(Percentiles), factory=Percentiles, doc="RTT over every hold")
    rtt_by_phase: Mapping[str, PhaseRtt] = field(mapping(text(64), nested(PhaseRtt), 65536), factory=dict,
                                                 doc="per phase: seconds, samples, open, percentiles")
    duration_s: float = field(number(0, 1e12), default=0.0, doc="seconds the run took")
    workers: WorkerCount = field(nested(WorkerCount), factory=WorkerCount, doc="worker processes per side")
    kernel: KernelCounters = field(nested(KernelCounters), factory=KernelCounters,
                                   doc="the hub host's kernel counters at the end")
    phases: tuple[PhaseSpan, ...] = field(seq(nested(PhaseSpan), 65536), default=(), doc="every phase entered")
    steps: tuple[Step, ...] = field(seq(nested(Step), 65536), default=(), doc="the ramp's steps as they happened")
    client_workers_start_s: float | None = field(optional(number(0, 1e9)), default=None,
                                                 doc="seconds the client workers took to start, before the ramp")
    events: tuple[str, ...] = field(seq(text(4096), 100_000), default=(), doc="what the run noted, in words")
    run_dir: str = field(text(4096), default="", doc="the run directory")
    incidents: tuple[Incident, ...] = field(seq(nested(Incident), 256), default=(),
                                            doc="walls met, each as the hub snapshotted it")
    worker_losses: tuple[WorkerLoss, ...] = field(seq(nested(WorkerLoss), 4 * MAX_LOSSES), default=(),
                                                  doc="workers that died during the run")
    preflight: Preflight | None = field(optional(nested(Preflight)), default=None,
                                        doc="what connscale check said of this host before the run")
    search: SearchResult | None = field(optional(nested(SearchResult)), default=None, doc="search mode's result")
    explanation: Explanation | None = field(optional(nested(Explanation)), default=None,
                                            doc="why it held or stopped, with the fix")
    metrics: Mapping[str, float] = field(mapping(text(64), either(COUNT, number(-1e18, 1e18)), 256), factory=dict,
                                         doc="the headline metrics as measured at the end (name -> value; "
                                             "one not measured is absent)")
    thresholds: tuple[ThresholdResult, ...] = field(seq(nested(ThresholdResult), 256), default=(),
                                                    doc="every threshold, as evaluated on the metrics")
    baseline: BaselineResult | None = field(optional(nested(BaselineResult)), default=None,
                                            doc="the run against its --baseline (None: none given)")
    target_events: tuple[ObservedEvent, ...] = field(seq(nested(ObservedEvent), MAX_TARGET_EVENTS), default=(),
                                                     doc="the observed server exiting, restarting, replaced "
                                                         "(connscale observe), timed by the hub")
    memory: MemoryTable | None = field(optional(nested(MemoryTable)), default=None,
                                       doc="memory per held connection, user and kernel, both ends (with an "
                                           "observer; see Memory per connection)")
    kind: str = field(choice("run", "hub"), default="run",
                      doc="run: written by connscale run; hub: by a hub started on its own (connscale server) "
                          "as it stopped, with no scenario of its own")
    split: tuple[AgentShare, ...] = field(seq(nested(AgentShare), 4096), default=(),
                                          doc="the target split across the fleet's agents by what each host "
                                              "reaches, and why each got its share")
    agents: tuple[AgentSummary, ...] = field(seq(nested(AgentSummary), 4096), default=(),
                                             doc="one row per agent: share, held, failures, ramp, RTT, CPU, "
                                                 "loop lag, saturation")
    lost_agents: tuple[AgentLost, ...] = field(seq(nested(AgentLost), 4096), default=(),
                                               doc="agents lost during the run and the connections lost with them")
    manifests: Mapping[str, str] = field(mapping(text(255), text(4096), 4096), factory=dict,
                                         doc="each host's manifest in the run directory: its agent's name (hub: "
                                             "the run's own host) -> file")
    cost_final_hold: Cost | None = field(optional(nested(Cost)), default=None,
                                         doc="connscale's own CPU (mean cores) and RSS (largest) over the final "
                                             "hold, per kind of process, the run's own process included")
    tls: TlsSummary = field(nested(TlsSummary), factory=TlsSummary, doc="which ends spoke TLS")
    handshake_ms: HandshakeMs = field(nested(HandshakeMs), factory=HandshakeMs,
                                      doc="p50, p90, p99, max (ms) and count of the run's TLS handshakes, from the "
                                          "timeline's handshake_hist (null without TLS)")
    tls_connect_rate: ConnectRate = field(nested(ConnectRate), factory=ConnectRate,
                                          doc="TLS connections made per second: max (the best second), mean (over "
                                              "the seconds that made any); null without TLS")
    mem_per_conn_bytes: SideBytes = field(nested(SideBytes), factory=SideBytes,
                                          doc="user memory per connection (per TLS connection with TLS) of "
                                              "connscale's workers per side at the peak: memory's "
                                              "connscale_server_rss and connscale_client_rss rows, opened")

    @classmethod
    def from_wire(cls, data: object) -> Summary:
        return super().from_wire(with_schema(data))

    @property
    def failure_total(self) -> int:
        return sum(self.failures.values())

    @property
    def gate_passed(self) -> bool:
        """Every threshold passed and nothing regressed against the baseline (true when there were none)."""
        return all(t.passed for t in self.thresholds) and (self.baseline is None or self.baseline.passed)


def read_summary(run_dir: str | os.PathLike[str]) -> tuple[Summary | None, str]:
    """A run directory's summary.json, or None and why not, in one line ("" when it has none)."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        text_ = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, ""
    except OSError as e:
        return None, f"{SUMMARY_FILE}: {e.strerror or e}"
    try:
        return Summary.from_wire(json.loads(text_)), ""
    except ValueError as e:  # RecordError is one; so is a file cut mid-write
        kind = "" if isinstance(e, RecordError) else "not JSON: "
        return None, f"{SUMMARY_FILE}: {kind}{str(e).splitlines()[0]}"
