"""The units of the headline metrics: how a value is written, and how a limit is read.

A threshold is written by a person (`mem_per_conn_server <= 2KB`, `hold_p99_ms <= 0.02s`,
`held >= 500k`), so a limit may carry a suffix of its unit's kind, and is converted to
the unit the metric is measured in. A suffix of another kind (`held >= 2KB`) is a
mistake said in one line, never a silent number. Decimal prefixes are powers of 1000
(KB, MB, k, M), binary ones of 1024 (KiB, MiB), as `ls`, `free -h` and the kernel say.
"""

from __future__ import annotations

import math
import re

import attrs

_NUMBER = re.compile(r"\s*([-+]?(?:\d[\d_,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(\S*)\s*")
_COUNT_SUFFIXES = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9}
_BYTE_SUFFIXES = {
    "": 1.0, "B": 1.0, "KB": 1e3, "kB": 1e3, "MB": 1e6, "GB": 1e9,
    "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3,
}
_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


@attrs.frozen
class Unit:
    """How one kind of value is written and read.

    `symbol` follows a value ("" for counts); `digits` are the decimals shown;
    `suffixes` map what a limit may end with to how many of this unit it means.
    """

    symbol: str
    digits: int
    suffixes: dict[str, float] = attrs.field(hash=False)
    words: str

    def format(self, value: float | None, symbol: bool = True) -> str:
        """`3,000`, `1.234 ms`, `1,843 B`; '-' for a value not measured."""
        if value is None:
            return "-"
        text = f"{value:,.{self.digits}f}"
        return f"{text} {self.symbol}" if symbol and self.symbol else text

    def parse(self, text: str) -> float:
        """A limit as written: `500000`, `500_000`, `500k`, `2KB`, `20ms`, `0.02s`. ValueError: one line."""
        match = _NUMBER.fullmatch(text)
        if not match:
            raise ValueError(f"expected a number{self._hint()}, got {text.strip()!r}")
        number = float(match[1].replace("_", "").replace(",", ""))
        suffix = match[2]
        if suffix not in self.suffixes:
            raise ValueError(f"{suffix!r} is not a unit of {self.words}{self._hint()}")
        value = number * self.suffixes[suffix]
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text.strip()!r}")
        return value

    def _hint(self) -> str:
        shown = [s for s in self.suffixes if s]
        return f" (optionally with {', '.join(shown)})" if shown else ""


def _time(unit_seconds: float) -> dict[str, float]:
    return {"": 1.0, **{name: seconds / unit_seconds for name, seconds in _SECONDS.items()}}


#: Connections, failures: whole numbers (500k = 500,000).
COUNT = Unit("", 0, _COUNT_SUFFIXES, "a count")
#: Connects per second.
RATE = Unit("/s", 0, {**_COUNT_SUFFIXES, "/s": 1.0, "k/s": 1e3}, "a rate")
#: RTT and other latencies, in milliseconds (a limit may be given in s or µs).
MS = Unit("ms", 3, _time(1e-3), "time")
#: CPU time per round trip, in microseconds.
US = Unit("µs", 2, _time(1e-6), "time")
#: CPU, in cores (1.0: one core busy all the time).
CORES = Unit("cores", 2, {"": 1.0, "cores": 1.0, "%": 0.01}, "CPU")
#: Memory, in bytes.
BYTES = Unit("B", 0, _BYTE_SUFFIXES, "memory")


def parse_percent(text: str) -> float:
    """`10%` -> 10.0 (a tolerance). ValueError: one line."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*", text)
    if not match:
        raise ValueError(f"expected a percentage like 10%, got {text.strip()!r}")
    return float(match[1])
