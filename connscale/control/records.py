"""Records the hub and its agents exchange over PB (see `config/records.py` for the rules).

An agent registers with an `AgentInfo` and is answered a `RegisterAnswer`; the
controller orders it with one `procs.records.WorkerOrder` per worker and polls it
for an `AgentReport`. Both ends build and read these classes; plain dicts exist
only on the wire.
"""

from __future__ import annotations

from typing import Any

import attrs

from connscale.config.records import (
    Record,
    boolean,
    choice,
    either,
    field,
    hostname,
    integer,
    ip_or_empty,
    loose,
    nested,
    number,
    optional,
    seq,
    text,
)
from connscale.metrics.snapshot import Snapshot, snapshot_from_wire
from connscale.procs.records import MAX_LOSSES, MAX_WORKER_TARGET, WorkerLoss, WorkerRow

#: Most workers one agent may run (plan.MAX_WORKERS, with room for an older peer).
MAX_AGENT_WORKERS = 4096
#: Source addresses one agent may bind (config's MAX_IPS).
MAX_SOURCE_IPS = 4096
#: A session token: 32 random bytes, hex.
SESSION = text(64, r"[0-9a-f]*", "a hex session token")
#: Counters are cumulative over a long run: bounded only by sanity.
_COUNT = integer(0, 1 << 62)


def snapshot(value: object) -> Snapshot:
    """A snapshot's counters as `Snapshot.counts()` sends them (the histograms travel apart)."""
    return attrs.evolve(snapshot_from_wire(value), rtt="", handshake="")


@attrs.frozen
class AgentInfo(Record):
    """What an agent says about itself when it registers."""

    host: str = field(text(255))
    pid: int = field(integer(1))
    cores: int = field(integer(1, 1 << 16), default=1)
    #: Connections one of its workers may hold (its fd budget).
    budget: int = field(integer(0, 1 << 30), default=0)
    #: Bytes of memory available for more workers (0: unknown).
    memory: int = field(integer(0, 1 << 56), default=0)
    source_ips: tuple[str, ...] = field(seq(ip_or_empty, MAX_SOURCE_IPS), default=())
    #: The address at which the agent reached the hub.
    master_host: str | None = field(optional(hostname), default=None)
    ephemeral: int = field(integer(0, 65536), default=0)
    configured_workers: int | str = field(either(integer(0, MAX_AGENT_WORKERS), choice("auto")), default="auto")
    workers: int = field(integer(0, MAX_AGENT_WORKERS), default=0)
    worker_targets: tuple[int, ...] = field(seq(integer(0, MAX_WORKER_TARGET), MAX_AGENT_WORKERS), default=())
    #: The token of the session this agent had with this hub ("" for a first login).
    session: str = field(SESSION, default="")
    #: Every limit of its host (`host.inventory.HostLimits.to_dict()`): the hub's
    #: budget and incidents judge this agent's share against them.
    limits: dict[str, Any] = field(loose(64, 2), factory=dict)
    #: Connects per second its workers pace at; its ping interval and timeout.
    rate: float = field(number(0, 10_000_000), default=0.0)
    interval: float = field(number(0, 86400), default=0.0)
    timeout: float = field(number(0, 86400), default=0.0)
    #: It answers `report_packed` (its report as one JSON string, config.packed);
    #: an agent that does not say so is asked for `report`.
    packed: bool = field(boolean, default=False)


@attrs.frozen
class RegisterAnswer(Record):
    """The hub's answer to a registration: the target the agent holds, its session token."""

    target: int = field(integer(0, MAX_WORKER_TARGET * MAX_AGENT_WORKERS))
    session: str = field(SESSION, default="")


@attrs.frozen
class AgentReport(Record):
    """An agent's numbers: cumulative counters, the RTTs since its last report, its workers."""

    totals: Snapshot = field(snapshot, factory=Snapshot)
    #: Encoded HdrHistogram of the RTTs since the previous report ("" if none).
    rtt: str = field(text(640 * 1024), default="")
    #: Encoded HdrHistogram of the TLS handshake times since the previous report ("" if none).
    handshake: str = field(text(640 * 1024), default="")
    workers: tuple[WorkerRow, ...] = field(seq(nested(WorkerRow), MAX_AGENT_WORKERS), default=())
    connecting: int = field(_COUNT, default=0)
    #: Worker losses and kills since the previous report, one line each.
    events: tuple[str, ...] = field(seq(text(2000), 1000), default=())
    #: The client workers lost since the previous report, with how and what they held.
    losses: tuple[WorkerLoss, ...] = field(seq(nested(WorkerLoss), MAX_LOSSES), default=())

    def to_wire(self) -> dict[str, object]:
        data = super().to_wire()
        data["totals"] = self.totals.counts()
        return data

    @property
    def open(self) -> int:
        return self.totals.open
