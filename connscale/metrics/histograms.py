"""RTT histograms: HdrHistograms in microseconds that merge across processes."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

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
    hist = new_histogram()
    if text:
        hist.decode_and_add(text)
    return hist


def rtt_summary_ms(hist: HdrHistogram) -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds, None when nothing was recorded."""
    if hist.get_total_count() == 0:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    pct = hist.get_percentile_to_value_dict([50, 90, 99])
    return {
        "p50": pct[50] / 1000.0,
        "p90": pct[90] / 1000.0,
        "p99": pct[99] / 1000.0,
        "max": hist.get_max_value() / 1000.0,
    }


class RttAccumulator:
    """Cumulative and windowed RTT views built from interval histograms."""

    def __init__(self) -> None:
        self.total = new_histogram()
        self.window = new_histogram()

    def add(self, encoded: str) -> None:
        if not encoded:
            return
        hist = decode_histogram(encoded)
        self.total.add(hist)
        self.window.add(hist)

    def add_histogram(self, hist: HdrHistogram) -> None:
        if hist.get_total_count():
            self.total.add(hist)
            self.window.add(hist)

    def take_window(self) -> HdrHistogram:
        window, self.window = self.window, new_histogram()
        return window
