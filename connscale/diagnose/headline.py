"""The headline metrics of a run, defined once: name, unit, which way is better, how it is read.

Thresholds (`held >= 500000`), baselines (`run --baseline`), `connscale compare`,
`connscale runs` and the README's list all take their metrics from `METRICS`, so a
metric means the same number everywhere. Each is read from a `RunView` (the run's
summary and its timeline, either of which may be missing) and is None where the run
has no such number (a ramp has no search capacity; a timeline cut before the final
hold has no hold latency). A finished run writes every value it measured into
`summary.json` (`Summary.metrics`), rounded as it is shown; `measure` prefers those
written values, so a run compared later shows exactly the numbers it wrote, and reads
from the files only what an older run did not write.

"The hold" is the load the run was about: the final hold in ramp mode, the plateau
at the knee in search mode (the capacity's own latency).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import attrs

from connscale.diagnose.gates import BETTER
from connscale.diagnose.records import MemoryTable, Plateau, Summary
from connscale.diagnose.memory import memory_table
from connscale.diagnose.units import BYTES, CORES, COUNT, MS, RATE, US, Unit
from connscale.metrics import handshakes
from connscale.metrics.cost import Cost, mean_cost
from connscale.metrics.histograms import Percentiles
from connscale.metrics.phases import FINAL_HOLD, phase_table, run_rtt_ms
from connscale.metrics.records import Stats
from connscale.metrics.series import Series, build_series, mem_per_conn_at_peak, run_end


class RunView:
    """One run's sources for its metrics: its summary (None: it wrote none) and timeline (may be empty)."""

    def __init__(self, summary: Summary | None, records: Sequence[Stats] = ()) -> None:
        self.summary = summary
        self.records = list(records)

    @functools.cached_property
    def end(self) -> int:
        """The last second before the stop."""
        return run_end(self.records)

    @functools.cached_property
    def series(self) -> Series:
        return build_series(self.records)

    @functools.cached_property
    def knee_plateau(self) -> Plateau | None:
        """Search mode: the plateau that passed at the knee (its last one)."""
        search = self.summary.search if self.summary is not None else None
        if search is None or not search.knee:
            return None
        return next((p for p in reversed(search.curve) if p.passed and p.level == search.knee), None)

    @functools.cached_property
    def hold_phase(self) -> str:
        """The phase of the hold: the final hold, or the knee's plateau in search mode."""
        plateau = self.knee_plateau
        return f"plateau:{plateau.index}" if plateau is not None else FINAL_HOLD

    @functools.cached_property
    def hold_seconds(self) -> list[int]:
        """Indexes of the timeline seconds of the hold."""
        return [i for i, r in enumerate(self.records) if r.phase == self.hold_phase]

    @functools.cached_property
    def memory(self) -> MemoryTable | None:
        """Memory per held connection: the summary's table, else the timeline's (a run that wrote none)."""
        if self.summary is not None and self.summary.memory is not None:
            return self.summary.memory
        return memory_table(self.records) if self.records else None

    @functools.cached_property
    def cost(self) -> Cost | None:
        """What connscale itself took over the final hold: the summary's, else the timeline's lines'."""
        if self.summary is not None and self.summary.cost_final_hold is not None:
            return self.summary.cost_final_hold
        return mean_cost(r.cost for r in self.records if r.phase == FINAL_HOLD)

    @functools.cached_property
    def hold_rtt(self) -> Percentiles:
        if self.knee_plateau is not None:
            return self.knee_plateau.rtt_ms
        if self.summary is not None and self.summary.rtt_final_hold_ms.known:
            return self.summary.rtt_final_hold_ms
        row = phase_table(self.records).get(FINAL_HOLD)
        return row.rtt_ms if row is not None else Percentiles()


# ----------------------------------------------------------------------------- how each is read

def _held(v: RunView) -> float | None:
    return v.summary.held if v.summary is not None else None


def _peak_open(v: RunView) -> float | None:
    if v.summary is not None:
        return v.summary.peak_open
    return max(v.series.open[: v.end + 1], default=None)


def _capacity(v: RunView) -> float | None:
    search = v.summary.search if v.summary is not None else None
    return search.knee if search is not None else None


def _failures(v: RunView) -> float | None:
    if v.summary is not None:
        return v.summary.failure_total
    return v.records[v.end].failure_total if v.records else None


def _ghosts(v: RunView) -> float | None:
    if v.summary is not None:
        return v.summary.ghosts
    return v.records[v.end].ghosts if v.records else None


def _hold(pick: Callable[[Percentiles], float | None]) -> Callable[[RunView], float | None]:
    return lambda v: pick(v.hold_rtt)


def _run_p99(v: RunView) -> float | None:
    if v.summary is not None and v.summary.rtt_ms.known:
        return v.summary.rtt_ms.p99
    return run_rtt_ms(v.records).p99 if v.records else None


def _ramp_rate(v: RunView) -> float | None:
    """Connections the ramp's steps opened over the seconds they took (each step's achieved
    rate weighted by its seconds)."""
    steps = [s for s in (v.summary.steps if v.summary is not None else ()) if s.seconds and s.rate_achieved]
    seconds = sum(s.seconds or 0.0 for s in steps)
    if not seconds:
        return None
    return sum((s.rate_achieved or 0.0) * (s.seconds or 0.0) for s in steps) / seconds


def _connect_rate_max(v: RunView) -> float | None:
    return max(v.series.connect_rate[: v.end + 1], default=None) if v.records else None


def _handshake_p99(v: RunView) -> float | None:
    # A summary without handshakes (no TLS, or written before TLS) says nothing the timeline cannot.
    if v.summary is not None and v.summary.handshake_ms.count:
        return v.summary.handshake_ms.p99
    return handshakes.handshake_ms(v.records).p99 if v.records else None


def _tls_connect_rate_max(v: RunView) -> float | None:
    if v.summary is not None and v.summary.tls_connect_rate.max is not None:
        return v.summary.tls_connect_rate.max
    return handshakes.connect_rate(v.records).max if v.records else None


def _memory_row(v: RunView, *keys: str) -> float | None:
    """The memory table's bytes per connection of the first of `keys` it has: after pinging, else just opened."""
    for key in keys:
        row = v.memory.row(key) if v.memory is not None else None
        if row is not None and (row.pinging if row.pinging is not None else row.opened) is not None:
            return row.pinging if row.pinging is not None else row.opened
    return None


def _mem_per_conn(side: str) -> Callable[[RunView], float | None]:
    """The side's user memory per held connection: the memory table's (the observed server's RSS, else
    connscale's own workers'), else the workers' RSS growth per connection at the peak (the report's
    figure before the table)."""
    keys = ("server_rss", "connscale_server_rss") if side == "server" else ("connscale_client_rss",)

    def read(v: RunView) -> float | None:
        table = _memory_row(v, *keys)
        if table is not None:
            return table
        server, client = mem_per_conn_at_peak(v.series, v.end)
        return server if side == "server" else client
    return read


def _kernel_per_conn(v: RunView) -> float | None:
    return _memory_row(v, "kernel")


def _own_cores(v: RunView) -> float | None:
    return v.cost.cores if v.cost is not None else None


def _own_rss(v: RunView) -> float | None:
    return v.cost.rss_bytes if v.cost is not None else None


#: CPU seconds a hold must have used for its CPU per round trip to be a figure (ten clock ticks).
MIN_CPU_S = 0.1


def _cpu_per_rtt(side: str) -> Callable[[RunView], float | None]:
    """CPU time of the side's workers per round trip over the hold, µs (bench/README's figure)."""
    def read(v: RunView) -> float | None:
        s, records = v.series, v.records
        cpu_s = 0.0
        trips = 0
        for i in v.hold_seconds:
            pct = s.cpu_pct[side][i]
            if i == 0 or pct is None:
                continue
            cpu_s += pct / 100.0 * (s.elapsed[i] - s.elapsed[i - 1])
            trips += max(0, records[i].client.pongs - records[i - 1].client.pongs)
        # The kernel counts CPU in 10 ms ticks: less than MIN_CPU_S of it is too coarse to divide.
        return cpu_s / trips * 1e6 if trips and cpu_s >= MIN_CPU_S else None
    return read


# ----------------------------------------------------------------------------- the registry

@attrs.frozen
class Metric:
    """One headline metric."""

    name: str
    unit: Unit
    better: str
    read: Callable[[RunView], float | None] = attrs.field(eq=False, repr=False)
    doc: str
    #: Compared against a --baseline without being named (the capacity and latency a release is held to).
    baseline: bool = False

    def __attrs_post_init__(self) -> None:
        assert self.better in BETTER, self.better

    def rounded(self, value: float) -> float | int:
        """As it is written and shown: to the unit's decimals (whole numbers as ints)."""
        return int(round(value)) if self.unit.digits == 0 else round(value, self.unit.digits)

    def format(self, value: float | None, symbol: bool = True) -> str:
        return self.unit.format(value, symbol)

    def worse(self, value: float, than: float) -> bool:
        return value < than if self.better == "higher" else value > than


METRICS: tuple[Metric, ...] = (
    Metric("held", COUNT, "higher", _held,
           "connections open at the end of the final hold with no failure during it (search: the knee)",
           baseline=True),
    Metric("peak_open", COUNT, "higher", _peak_open, "the most connections open at once before the stop"),
    Metric("search.capacity", COUNT, "higher", _capacity,
           "search mode: the largest count that met the SLO (the knee); not measured by a ramp", baseline=True),
    Metric("failures", COUNT, "lower", _failures, "failures of every cause, both sides", baseline=True),
    Metric("ghosts", COUNT, "lower", _ghosts, "half-open connections at the end"),
    Metric("hold_p50_ms", MS, "lower", _hold(lambda p: p.p50),
           "median RTT over the hold (the final hold; search: the knee's plateau)"),
    Metric("hold_p99_ms", MS, "lower", _hold(lambda p: p.p99), "p99 RTT over the hold", baseline=True),
    Metric("hold_max_ms", MS, "lower", _hold(lambda p: p.max), "the slowest RTT of the hold"),
    Metric("run_p99_ms", MS, "lower", _run_p99, "p99 RTT over the whole run, ramps included"),
    Metric("ramp_rate", RATE, "higher", _ramp_rate,
           "connects per second the ramp's steps achieved (connections they opened over their seconds)",
           baseline=True),
    Metric("connect_rate_max", RATE, "higher", _connect_rate_max, "the most connects in one second"),
    Metric("tls_handshake_p99_ms", MS, "lower", _handshake_p99,
           "p99 of the run's TLS handshakes, TCP connected to TLS ready (with TLS only)"),
    Metric("tls_connect_rate_max", RATE, "higher", _tls_connect_rate_max,
           "the most TLS connections made (handshakes finished) in one second (with TLS only)"),
    Metric("mem_per_conn_server", BYTES, "lower", _mem_per_conn("server"),
           "the server's user memory per held connection (the memory table: the observed server's RSS, else "
           "connscale's server workers'; runs without it: the workers' RSS growth at the peak)"),
    Metric("mem_per_conn_client", BYTES, "lower", _mem_per_conn("client"),
           "connscale's client workers' memory per held connection (the same sources)"),
    Metric("kernel_mem_per_conn", BYTES, "lower", _kernel_per_conn,
           "the kernel's memory per held connection: socket slab and TCP buffers of the observer's host "
           "(both ends when the clients run there too)"),
    Metric("cpu_per_rtt_server_us", US, "lower", _cpu_per_rtt("server"),
           "server workers' CPU time per round trip over the hold (measured when the hold used a tenth of a "
           "second of CPU or more)"),
    Metric("cpu_per_rtt_client_us", US, "lower", _cpu_per_rtt("client"),
           "client workers' CPU time per round trip over the hold (the same)"),
    Metric("own_cores", CORES, "lower", _own_cores,
           "cores connscale itself used over the final hold (every process of the run: hub, workers, agents, "
           "observers, the run's own)"),
    Metric("own_rss", BYTES, "lower", _own_rss, "connscale's own memory (RSS) over the final hold, at its largest"),
)
BY_NAME: Mapping[str, Metric] = {m.name: m for m in METRICS}
assert len(BY_NAME) == len(METRICS), "two metrics of one name"


def measure(view: RunView) -> dict[str, float | int]:
    """Every metric the run has: as its summary wrote it, else read from its files now (rounded as shown)."""
    written = view.summary.metrics if view.summary is not None else {}
    out: dict[str, float | int] = {}
    for metric in METRICS:
        value = written.get(metric.name)
        if value is None:
            read = metric.read(view)
            value = metric.rounded(read) if read is not None else None
        if value is not None:
            out[metric.name] = value
    return out


def readme_table() -> str:
    """The README's list of metrics (tests/test_gate.py holds the two together)."""
    lines = ["| metric | unit | better | what | compared with a baseline by default |", "|---|---|---|---|---|"]
    for m in METRICS:
        unit = m.unit.symbol or "count"
        lines.append(f"| `{m.name}` | {unit} | {m.better} | {m.doc} | {'yes' if m.baseline else ''} |")
    return "\n".join(lines)
