"""Records the hub and its agents exchange over PB (see `records/base.py` for the rules).

An agent registers with an `AgentInfo` and is answered a `RegisterAnswer`; the
controller orders it with one `procs.records.WorkerOrder` per worker and polls it
for an `AgentReport`. Both ends build and read these classes; plain dicts exist
only on the wire.

What an agent says reaches the hub's log, its timeline and operators'
terminals, and the agent key that lets it say so may be held by someone
hostile: its text is a small alphabet without control characters (a host name,
failure keys `phase:cause`), an event is one printable line, and every list
and mapping is bounded in items as well as bytes (`AgentReport.from_packed`
bounds the JSON text's elements before it is parsed at all). What one agent
may add per second and in total is the registry's to bound.
"""

from __future__ import annotations

import re
from typing import Any

import attrs

from connscale.records.packed import PackError, unpack
from connscale.records.base import (
    Record, RecordError, choice, either, field, hostname, integer, ip_or_empty, loose, nested, number, optional, seq,
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
#: Failure keys (phase:cause) and protocol-error kinds one report may carry: three phases
#: times the errno names and connscale's own causes fit with room to spare.
MAX_FAILURE_KEYS = 256
_FAILURE_KEY = re.compile(r"[a-z_]{1,16}:[A-Za-z0-9_]{1,48}")
_PROTOCOL_KEY = re.compile(r"[A-Za-z0-9_]{1,48}")
#: Events one report may carry (worker losses and kills since the previous report), each one line.
MAX_EVENTS = 16
EVENT = text(300, r"[^\x00-\x1f\x7f-\x9f]*", "one line of printable text")
#: A host as `socket.gethostname()` says it: shown in tables, never a terminal's control sequence.
HOST = text(255, r"[A-Za-z0-9_.:-]{1,255}", "a host name (letters, digits, '.', '_', '-', ':')")
#: Bytes and JSON elements of one packed report (4096 worker rows of ~40 values fit).
MAX_REPORT_BYTES = 4 * 1024 * 1024
MAX_REPORT_ELEMENTS = 256 * 1024
_STRUCTURE = str.maketrans("", "", "".join(chr(c) for c in range(128) if chr(c) not in ",:[{"))


def snapshot(value: object) -> Snapshot:
    """A snapshot's counters as `Snapshot.counts()` sends them (the histograms travel apart);
    failure keys `phase:cause`, at most MAX_FAILURE_KEYS of them."""
    snap = attrs.evolve(snapshot_from_wire(value), rtt="", handshake="")
    for what, keys, pattern in (("failures", snap.failures, _FAILURE_KEY), ("protocol", snap.protocol, _PROTOCOL_KEY)):
        if len(keys) > MAX_FAILURE_KEYS:
            raise RecordError(f"{what}: more than {MAX_FAILURE_KEYS} keys ({len(keys)})")
        for key in keys:
            if not pattern.fullmatch(key):
                raise RecordError(f"{what}: a key that is not phase:cause ({key[:40]!r})")
    return snap


@attrs.frozen
class AgentInfo(Record):
    """What an agent says about itself when it registers."""

    host: str = field(HOST)
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
    events: tuple[str, ...] = field(seq(EVENT, MAX_EVENTS), default=())
    #: The client workers lost since the previous report, with how and what they held.
    losses: tuple[WorkerLoss, ...] = field(seq(nested(WorkerLoss), MAX_LOSSES), default=())
    #: The agent's own process: CPU seconds and RSS (host.resources), for connscale's own cost.
    resources: dict[str, Any] = field(loose(16, 1), factory=dict)

    def to_wire(self) -> dict[str, object]:
        data = super().to_wire()
        data["totals"] = self.totals.counts()
        return data

    @property
    def open(self) -> int:
        return self.totals.open

    @classmethod
    def from_packed(cls, data: object) -> AgentReport:
        """A report as `report_packed` answers it, bounded in bytes and
        in JSON elements before it is parsed: json.loads builds whatever it is given."""
        pieces = data if isinstance(data, list) else [data]
        size = 0
        elements = 0
        for piece in pieces:
            if isinstance(piece, (str, bytes)):
                text_ = piece.decode("utf-8", "replace") if isinstance(piece, bytes) else piece
                size += len(text_)
                elements += len(text_.translate(_STRUCTURE))
        if size > MAX_REPORT_BYTES:
            raise RecordError(f"AgentReport: more than {MAX_REPORT_BYTES} bytes")
        if elements > MAX_REPORT_ELEMENTS:
            raise RecordError(f"AgentReport: more than {MAX_REPORT_ELEMENTS} elements")
        try:
            return cls.from_wire(unpack(data))
        except PackError as e:
            raise RecordError(f"AgentReport: {e}") from None
