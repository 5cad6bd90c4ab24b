"""RTT buckets for the hot path: HdrHistogram's layout without HdrHistogram.

A worker records one RTT per pong. `HdrHistogram.record_value` is pure Python
(about seven calls, ~1 µs); a worker needs neither its 32 KB ctypes array nor
its zlib/base64 encoding (nor the imports: hdrh, ctypes). These buckets are the
same log-linear layout as an HdrHistogram of 2 significant digits with a unit
of 1 µs (values below 256 exact, then 128 buckets per power of two: ~0.8 %
resolution), kept in a plain list; the pool computes the index inline (see
`index`). A worker ships the non-empty buckets as (index, count) pairs; the
parent adds them up and turns them into an HdrHistogram only when it reports
(`metrics.histograms`), so percentiles, merging and the wire format between
hosts stay HdrHistogram's.
"""

from __future__ import annotations

from array import array
from itertools import compress

SUB_BITS = 8
#: Largest value kept (µs), ~17.9 minutes; larger ones count as this.
MAX_US = (1 << 30) - 1
#: Buckets: exact 0..255, then 128 per power of two up to 2^30.
LENGTH = ((30 - SUB_BITS) << 7) + 256


#: What an encoded bucket set starts with (an encoded HdrHistogram never does).
PREFIX = "b1:"


def is_encoded_buckets(text: str) -> bool:
    return text.startswith(PREFIX)


def index(us: int) -> int:
    """The bucket of a value in µs (the pool inlines this expression)."""
    us = min(us, MAX_US)
    shift = us.bit_length() - SUB_BITS
    return (shift << 7) + (us >> shift) if shift > 0 else us


def lowest(idx: int) -> int:
    """The smallest value that falls into bucket `idx`."""
    if idx < 256:
        return idx
    shift = (idx >> 7) - 1
    return (idx - (shift << 7)) << shift


class RttBuckets:
    """Counts per bucket; `counts` is read and written directly by the pool."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * LENGTH

    def record(self, us: int) -> None:
        self.counts[index(us)] += 1

    def total(self) -> int:
        return sum(self.counts)

    def pairs(self) -> array:
        """Non-empty buckets as a flat array [index, count, index, count, ...]."""
        counts = self.counts
        # compress() finds the non-empty buckets in C: a worker's histogram has
        # 3,072 buckets of which a second's RTTs fill a few hundred at most
        # (a loop over all of them in Python was ~150 µs per snapshot).
        where = list(compress(_INDICES, counts))
        out = array("I", bytes(8 * len(where)))
        out[0::2] = array("I", where)
        out[1::2] = array("I", [min(n, 0xFFFFFFFF) for n in map(counts.__getitem__, where)])
        return out

    def encode(self) -> str:
        """`pairs()` as one short string (PB and JSON carry it as it is)."""
        return PREFIX + self.pairs().tobytes().hex()

    def add_encoded(self, text: str) -> None:
        pairs = array("I")
        pairs.frombytes(bytes.fromhex(text[len(PREFIX):]))
        counts = self.counts
        for idx, n in zip(pairs[::2], pairs[1::2]):
            if idx < LENGTH:  # unsigned: never below 0
                counts[idx] += n

    def add(self, other: RttBuckets) -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n

    def reset(self) -> None:
        # In place: the pool holds a reference to the list.
        self.counts[:] = _ZEROS

    def __bool__(self) -> bool:
        return any(self.counts)

    def values(self) -> list[tuple[int, int]]:
        """(lowest value of the bucket, count) for every non-empty bucket."""
        return [(lowest(i), n) for i, n in enumerate(self.counts) if n]


_ZEROS = [0] * LENGTH
_INDICES = list(range(LENGTH))  # a list: compress() then makes no int objects
