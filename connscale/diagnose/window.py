"""What the walls are judged on, and what they return.

A wall is named (diagnose/walls.py) from a `Window` (what was seen over the last
few seconds: counts, rates, kernel counter deltas, every worker's load as a
`WorkerLoad`) and a `Context` (the setup: backlog, timeouts, each agent's
`AgentSetup`), and comes back as a `Finding`. The evidence lines every wall
shares (a failure count, the kernel's overflow counters, the busiest workers)
are here too, so each wall module words them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from connscale.metrics.records import IncidentWorker, KernelCounters, Stats
from connscale.metrics.workers import WorkerRef

# -- when is a worker saturated ---------------------------------------------------------------
#: A worker busy this share of a core is saturated (one process uses one core).
CPU_SATURATED = 0.9
#: Mean loop lag over a second at which every read is noticeably late.
LAG_MEAN_SATURATED_MS = 50.0
#: A single stall this long in a second delays every pong waiting behind it.
LAG_MAX_SATURATED_MS = 500.0
#: A worker that has not answered its parent for this long is stopped or wedged.
SILENT_S = 2.0


@attrs.frozen
class WorkerLoad:
    side: str          # client | server
    agent: str         # the agent's name; "hub" for server workers
    index: int
    pid: int | None
    alive: bool = True
    open: int = 0
    target: int = 0
    budget: int = 0
    cpu: float | None = None
    lag_ms_max: float | None = None
    lag_ms_mean: float | None = None
    nofile: int | None = None
    silent_s: float | None = None
    #: For a silent worker: stopped by the kernel (True), running but late (False), unknown (None).
    stopped: bool | None = None

    @property
    def name(self) -> str:
        return f"{self.agent}-{self.side}-worker-{self.index + 1}"

    @property
    def saturated(self) -> bool:
        return self.alive and (
            (self.cpu or 0.0) >= CPU_SATURATED
            or (self.lag_ms_mean or 0.0) >= LAG_MEAN_SATURATED_MS
            or (self.lag_ms_max or 0.0) >= LAG_MAX_SATURATED_MS
            or self.starved
        )

    @property
    def late(self) -> bool:
        return self.alive and (self.silent_s or 0.0) >= SILENT_S

    @property
    def silent(self) -> bool:
        """Late and not known to be running: stopped or wedged."""
        return self.late and self.stopped is not False

    @property
    def starved(self) -> bool:
        """Late although the kernel has it running: it cannot get the CPU to reach its loop."""
        return self.late and self.stopped is False

    def describe(self) -> str:
        bits = [f"{self.name} (pid {self.pid})"]
        if self.silent:
            # Its load figures are from before it went quiet: leave them out.
            return f"{bits[0]}, has not answered for {self.silent_s:g} s, {self.open:,} open at its last report"
        if self.starved:
            return (f"{bits[0]}, running but has not answered for {self.silent_s:g} s (starved of CPU), "
                    f"{self.open:,} open at its last report")
        if self.cpu is not None:
            bits.append(f"cpu {self.cpu * 100:.0f} %")
        if self.lag_ms_mean is not None:
            bits.append(f"loop lag mean {self.lag_ms_mean:g} ms, max {self.lag_ms_max:g} ms")
        bits.append(f"{self.open:,} open")
        return ", ".join(bits)

    @classmethod
    def of(cls, ref: WorkerRef) -> "WorkerLoad":
        """A worker of a stats record (`Stats.worker_rows()`), as the walls judge it."""
        row = ref.row
        return cls(
            side=ref.side, agent=ref.agent, index=row.index, pid=row.pid, alive=row.alive, open=row.open,
            target=row.target, budget=row.budget, cpu=row.cpu, lag_ms_max=row.lag_ms_max,
            lag_ms_mean=row.lag_ms_mean, nofile=row.nofile, silent_s=row.silent_s, stopped=row.stopped,
        )

    def incident_row(self) -> IncidentWorker:
        """What an incident keeps of it."""
        return IncidentWorker(side=self.side, agent=self.agent, index=self.index, pid=self.pid, open=self.open,
                              cpu=self.cpu, lag_ms_max=self.lag_ms_max, lag_ms_mean=self.lag_ms_mean,
                              nofile=self.nofile, silent_s=self.silent_s, alive=self.alive)


def worker_loads(record: Stats) -> list[WorkerLoad]:
    """Every worker of a stats record the walls judge (`Stats.worker_rows()`: connected agents only)."""
    return [WorkerLoad.of(ref) for ref in record.worker_rows()]


@attrs.frozen
class AgentSetup:
    """What the controller knows of one agent (from its registration)."""

    source_ips: tuple[str, ...] = ()
    ephemeral: int | None = None          # ports per tuple it planned with
    port_range: tuple[int, int] | None = None
    cores: float | None = None
    host: str = ""


@attrs.frozen
class Context:
    """The setup the walls are judged against."""

    interval: float = 5.0
    timeout: float = 1.0
    backlog: int = 4096
    server_ports: int = 1
    per_route_max: int = 14_000
    somaxconn: int | None = None
    tcp_max_syn_backlog: int | None = None
    abort_on_overflow: int | None = None
    hub_cores: float | None = None
    hub_host: str = ""
    agents: Mapping[str, AgentSetup] = attrs.Factory(dict)
    #: False when the clients' target is not connscale's server (client.url).
    own_server: bool = True
    #: What the clients speak (net/profiles): line, raw, redis, http, websocket, mqtt, custom.
    protocol: str = "line"


def _kernel_of(value: KernelCounters | Mapping[str, int]) -> KernelCounters:
    """Counters given by name (tests, a hand-made window) as the record."""
    return value if isinstance(value, KernelCounters) else KernelCounters(**value)


@attrs.frozen
class Window:
    """What was seen over the last few seconds, as the walls need it."""

    elapsed_s: float = 0.0
    open: int = 0
    server_open: int = 0
    target: int = 0
    connecting: int = 0
    connect_rate: float = 0.0
    asked_rate: float = 0.0
    failures: Mapping[str, int] = attrs.Factory(dict)   # "phase:cause" and "server:phase:cause" -> n in the window
    kernel: KernelCounters = attrs.field(factory=KernelCounters, converter=_kernel_of)   # levels now
    kernel_delta: KernelCounters = attrs.field(factory=KernelCounters, converter=_kernel_of)  # growth in the window
    ghosts: int = 0
    ghosts_max: int = 0                                 # the most seen in the window
    workers: Sequence[WorkerLoad] = ()
    host_busy: float | None = None                      # the hub host's CPU share, when known
    #: What the server said, by cause (a sample each; "server" is its Server: header).
    said: Mapping[str, str] = attrs.Factory(dict)
    #: A server-side wall the observers' rows show this second (diagnose.observed), if any.
    server_wall: Finding | None = None
    #: An observer watches a live server process: its reading (a second behind a worker's
    #: own count, at times) names a server-side wall more exactly than the counts can.
    server_watched: bool = False

    def side(self, side: str) -> list[WorkerLoad]:
        return [w for w in self.workers if w.side == side]

    def saturated(self, side: str) -> list[WorkerLoad]:
        return [w for w in self.side(side) if w.saturated]

    def silent(self, side: str) -> list[WorkerLoad]:
        return [w for w in self.side(side) if w.silent]

    def top_failures(self, n: int = 3) -> str:
        items = sorted(self.failures.items(), key=lambda kv: -kv[1])[:n]
        return ", ".join(f"{k}={v:,}" for k, v in items)


@attrs.frozen
class Finding:
    wall: str
    side: str
    headline: str
    evidence: tuple[str, ...] = ()
    fix: tuple[str, ...] = ()
    #: False when the evidence is thin (no side looks busy or stopped yet): the
    #: detector waits a second or two for better evidence before it settles.
    confident: bool = True


#: The causes of a connection the peer ended (a close or a reset).
PEER_CLOSED = ("closed_by_peer", "ECONNRESET")


@attrs.frozen
class Failure:
    """A failure key ("phase:cause", "server:phase:cause") in its parts."""

    key: str
    side: str   # client | server
    phase: str
    cause: str

    @classmethod
    def of(cls, key: str) -> "Failure":
        side, rest = "client", key
        if key.startswith("server:"):
            side, rest = "server", key[len("server:"):]
        phase, _, cause = rest.partition(":")
        return cls(key=key, side=side, phase=phase, cause=cause)


# -- evidence every wall words the same way ------------------------------------------------


def count_line(w: Window, key: str) -> str:
    return f"{w.failures.get(key, 0):,} {key} in the last seconds at {w.open:,} open"


def kernel_line(w: Window) -> str | None:
    d = w.kernel_delta
    named = [(d.listen_overflows, "ListenOverflows"), (d.listen_drops, "ListenDrops"),
             (d.abort_on_overflow, "TCPAbortOnOverflow"), (d.syn_retrans, "SYN retransmits")]
    bits = [f"{label} +{n:,}" for n, label in named if n]
    return "kernel: " + ", ".join(bits) if bits else None


def busiest(workers: Sequence[WorkerLoad], n: int = 3) -> list[str]:
    ranked = sorted(workers, key=lambda x: (-(x.silent_s or 0) if x.silent else 0, -(x.lag_ms_mean or 0),
                                            -(x.cpu or 0)))
    return [x.describe() for x in ranked[:n]]
