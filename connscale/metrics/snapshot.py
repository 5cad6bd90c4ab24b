"""What a process reports: cumulative counters plus an interval histogram."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import attrs


@attrs.frozen
class Snapshot:
    """What a process reports: cumulative counters and an interval histogram.

    Counters are cumulative so a lost or duplicated report never skews a sum;
    only the histogram is an interval delta (histograms add, percentiles don't).
    Failures are keyed "phase:cause" so the record is plain JSON and PB data.
    """

    open: int = 0
    opened: int = 0
    closed: int = 0
    pings: int = 0
    pongs: int = 0
    skipped: int = 0
    failures: Mapping[str, int] = attrs.field(factory=dict)
    protocol: Mapping[str, int] = attrs.field(factory=dict)
    #: cause -> what the server said for it (a sample; see Counters.say).
    said: Mapping[str, str] = attrs.field(factory=dict)
    #: RTTs since the previous snapshot: a worker's encoded buckets
    #: (metrics.buckets) or an encoded HdrHistogram; "" when none.
    rtt: str = ""
    #: TLS handshakes finished (cumulative) that resumed a session.
    resumed: int = 0
    #: TLS handshake times since the previous snapshot, encoded like `rtt`; "" when none.
    handshake: str = ""

    @property
    def failure_total(self) -> int:
        return sum(self.failures.values())

    def to_dict(self) -> dict[str, object]:
        """Plain dicts and numbers: fit for PB and JSON as they are."""
        return attrs.asdict(self)

    def counts(self) -> dict[str, object]:
        """`to_dict` without the histogram, plus the failure total: what
        reports and the timeline show of a snapshot."""
        data = self.to_dict()
        del data["rtt"]
        del data["handshake"]
        data["failure_total"] = self.failure_total
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Snapshot":
        fields = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})  # type: ignore[arg-type]


def sum_snapshots(snaps: Iterable[Snapshot]) -> Snapshot:
    """Add counters of several processes; the histogram fields are dropped
    (merge those with `RttAccumulator`)."""
    # Any: mypy checks **total against every field, the text ones included.
    total: dict[str, Any] = {"open": 0, "opened": 0, "closed": 0, "pings": 0, "pongs": 0, "skipped": 0,
                             "resumed": 0}
    failures: dict[str, int] = {}
    protocol: dict[str, int] = {}
    said: dict[str, str] = {}
    for s in snaps:
        for k, words in s.said.items():
            if k not in said and len(said) < 32:
                said[k] = words
        for k in total:
            total[k] += getattr(s, k)
        for k, n in s.failures.items():
            failures[k] = failures.get(k, 0) + n
        for k, n in s.protocol.items():
            protocol[k] = protocol.get(k, 0) + n
    return Snapshot(failures=failures, protocol=protocol, said=said, **total)


def snapshot_from_wire(value: object) -> Snapshot:
    """A snapshot's counters as a peer sent them (`to_dict` or `counts`), checked strictly:
    counts are non-negative ints, failure keys bounded text; anything else is a RecordError."""
    from connscale.records.base import RecordError, integer, mapping, text

    count = integer(0, 1 << 62)
    data = mapping(text(64), lambda v: v, 64)(value)
    out: dict[str, object] = {}
    for name in ("open", "opened", "closed", "pings", "pongs", "skipped", "resumed"):
        if name in data:
            try:
                out[name] = count(data[name])
            except RecordError as e:
                raise RecordError(f"{name}: {e}") from None
    for name in ("failures", "protocol"):
        if name in data:
            try:
                out[name] = mapping(text(128), count, 4096)(data[name])
            except RecordError as e:
                raise RecordError(f"{name}: {e}") from None
    if "said" in data:
        try:
            out["said"] = mapping(text(64), text(400), 64)(data["said"])
        except RecordError as e:
            raise RecordError(f"said: {e}") from None
    for name in ("rtt", "handshake"):
        if name in data:
            try:
                out[name] = text(640 * 1024)(data[name])
            except RecordError as e:
                raise RecordError(f"{name}: {e}") from None
    return Snapshot(**out)  # type: ignore[arg-type]
