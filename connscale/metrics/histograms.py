"""RTT histograms: HdrHistograms in microseconds that merge across processes."""

from __future__ import annotations

import attrs
from hdrh.histogram import HdrHistogram

from connscale.records.base import Record, field, number, optional
from connscale.metrics.buckets import RttBuckets, is_encoded_buckets

# RTTs are recorded in microseconds: 1 us .. 10 min at 2 significant digits
# (about 1 % resolution, a few KiB per histogram).
_RTT_LOW_US = 1
_RTT_HIGH_US = 600_000_000
_RTT_DIGITS = 2


def new_histogram() -> HdrHistogram:
    return HdrHistogram(_RTT_LOW_US, _RTT_HIGH_US, _RTT_DIGITS)


def encode_histogram(hist: HdrHistogram) -> str:
    """A compact text form that crosses PB and JSON unchanged."""
    raw = hist.encode()
    return raw.decode("ascii") if isinstance(raw, bytes) else str(raw)


def decode_histogram(text: str) -> HdrHistogram:
    """An encoded HdrHistogram, or a worker's encoded buckets, as a histogram."""
    hist = new_histogram()
    if text:
        if is_encoded_buckets(text):
            buckets = RttBuckets()
            buckets.add_encoded(text)
            _record_buckets(hist, buckets)
        else:
            hist.decode_and_add(text)
    return hist


#: A span of milliseconds, or None (no pong came back in it).
MS = optional(number(0.0, 1e9))


@attrs.frozen
class Percentiles(Record):
    """RTT percentiles of some span, in milliseconds; None when no pong came back in it."""

    p50: float | None = field(MS, default=None, doc="median")
    p90: float | None = field(MS, default=None, doc="90th percentile")
    p99: float | None = field(MS, default=None, doc="99th percentile")
    max: float | None = field(MS, default=None, doc="the slowest")

    @property
    def known(self) -> bool:
        return self.p99 is not None


def rtt_summary_ms(hist: HdrHistogram) -> Percentiles:
    """p50/p90/p99/max in milliseconds, None when nothing was recorded."""
    if hist.get_total_count() == 0:
        return Percentiles()
    pct = hist.get_percentile_to_value_dict([50, 90, 99])
    return Percentiles(pct[50] / 1000.0, pct[90] / 1000.0, pct[99] / 1000.0, hist.get_max_value() / 1000.0)


class RttAccumulator:
    """Cumulative and windowed RTT views built from interval histograms.

    `add` takes what a worker or an agent reports: an encoded HdrHistogram
    (what agents send the hub) or a worker's encoded buckets (see
    `metrics.buckets`). Buckets are summed as they come and turned into
    HdrHistogram values only when `total` or `take_window()` is read, so a
    parent of fifty workers does a list addition per report, not fifty
    histogram merges. With `keep_total=False` only the window is kept.
    """

    def __init__(self, keep_total: bool = True) -> None:
        self.keep_total = keep_total
        self._total = new_histogram()
        self.window = new_histogram()
        self._total_buckets = RttBuckets()
        self._window_buckets = RttBuckets()
        self._pending = False

    @property
    def total(self) -> HdrHistogram:
        if self._pending:
            self._pending = False
            _record_buckets(self._total, self._total_buckets)
        return self._total

    def add(self, encoded: str) -> None:
        if not encoded:
            return
        if is_encoded_buckets(encoded):
            self._window_buckets.add_encoded(encoded)
            if self.keep_total:
                self._total_buckets.add_encoded(encoded)
                self._pending = True
            return
        self.add_histogram(decode_histogram(encoded))

    def add_histogram(self, hist: HdrHistogram) -> None:
        if hist.get_total_count():
            if self.keep_total:
                self._total.add(hist)
            self.window.add(hist)

    def take_window(self) -> HdrHistogram:
        window, self.window = self.window, new_histogram()
        _record_buckets(window, self._window_buckets)
        return window


def _record_buckets(hist: HdrHistogram, buckets: RttBuckets) -> None:
    """Move the counts of `buckets` into `hist` (and empty `buckets`)."""
    if buckets:
        for value, count in buckets.values():
            hist.record_value(max(1, value), count)
        buckets.reset()


def buckets_to_histogram(buckets: RttBuckets) -> HdrHistogram:
    hist = new_histogram()
    for value, count in buckets.values():
        hist.record_value(max(1, value), count)
    return hist
