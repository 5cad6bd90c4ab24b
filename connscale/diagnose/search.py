"""Search mode: the largest connection count a setup sustains, found by itself.

`Search` decides the next plateau: it grows by `growth` from `start` while
plateaus pass, and once one fails it bisects between the highest pass and the
lowest failure until the gap is within `resolution` of the pass. `judge` says
whether a plateau passed its SLO, from the timeline seconds it spanned: p99 RTT,
timeouts per ping, failures of any kind, and connscale's own side saturated
(a plateau the measuring side could not measure is not the server's pass).

Pure: the run's driver (`connscale.app.search`) holds the plateaus and feeds
the results back; tests drive both with invented timelines.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs

from connscale.diagnose.fixes import fix_of
from connscale.diagnose.records import Cause, Miss, Plateau, SearchResult, Slo
from connscale.diagnose.verdict import primary_incident
from connscale.metrics.histograms import Percentiles, rtt_summary_ms
from connscale.metrics.phases import merged_histogram
from connscale.metrics.records import Incident, Stats

__all__ = ["Plateau", "Search", "Slo", "capacity_line", "explain_search", "judge", "plateau_misses", "slo_misses"]


class Search:
    """Which level to try next: grow, then bisect."""

    def __init__(self, start: int, target: int, growth: float = 2.0, resolution: float = 0.05,
                 min_gap: int = 100) -> None:
        if start < 1 or target < 1 or growth <= 1.0:
            raise ValueError("start and target must be >= 1 and growth > 1")
        self.start = min(start, target)
        self.target = target
        self.growth = growth
        self.resolution = resolution
        self.min_gap = min_gap
        self.passed = 0                 # the highest level that passed
        self.failed: int | None = None  # the lowest level that failed
        self.tried: list[tuple[int, bool]] = []

    def next_level(self) -> int | None:
        """The next plateau, or None when the knee is found (or the target passed)."""
        if not self.tried:
            return self.start
        if self.failed is None:
            if self.passed >= self.target:
                return None
            return min(self.target, max(self.passed + 1, math.ceil(self.passed * self.growth)))
        gap = self.failed - self.passed
        if gap <= max(self.min_gap, self.resolution * self.passed):
            return None
        return self.passed + gap // 2

    def report(self, level: int, passed: bool) -> None:
        self.tried.append((level, passed))
        if passed:
            self.passed = max(self.passed, level)
            # A failure below a pass is noise in the other direction: keep the lowest above.
            if self.failed is not None and self.failed <= level:
                self.failed = None
        else:
            self.failed = level if self.failed is None else min(self.failed, level)

    @property
    def knee(self) -> int:
        return self.passed

    @property
    def reached_target(self) -> bool:
        return self.passed >= self.target


def judge(index: int, level: int, records: Sequence[Stats], slo: Slo, reached: bool = True,
          before: Stats | None = None, incidents: Sequence[Incident] = (), placed: int | None = None) -> Plateau:
    """Pass or fail the plateau whose timeline seconds are `records` (`before`: the second before it).

    `placed` is what the controller could place of `level` (less when the routes are full).
    """
    first = before or (records[0] if records else None)
    last = records[-1] if records else first
    f0 = first.failures() if first is not None else {}
    f1 = last.failures() if last is not None else {}
    failures = {k: n - f0.get(k, 0) for k, n in f1.items() if n > f0.get(k, 0)}
    timeouts = sum(n for k, n in failures.items() if k.endswith("no_answer_from_server"))
    pings = (last.client.pings - first.client.pings) if first is not None and last is not None else 0
    rtt = rtt_summary_ms(merged_histogram(records))
    opens = [r.client.open for r in records]
    saturated = sum(1 for r in records if r.measuring_side_saturated)
    misses = slo_misses(level, slo, reached=reached, placed=placed, opened=max(opens or [0]), failures=failures,
                        pings=pings, timeouts=timeouts, rtt=rtt, saturated_s=saturated, seconds=len(records))
    reasons = [m.reason for m in misses]
    passed = not reasons
    cause = None
    if not passed and placed is not None and placed < level:
        cause = Cause("routes", "client", f"the routes hold at most {placed:,} connections (source IPs x server "
                      "ports x client.per_route_max)",
                      fix_of("route_quota").fix)
    elif not passed:
        t0 = first.elapsed_s if first is not None else 0.0
        t1 = last.elapsed_s if last is not None else t0
        cause = _cause(records, _relevant(incidents, failures, t0, t1), saturated > slo.saturated_s, rtt, reasons)
    return Plateau(
        index=index, level=level, reached=reached, seconds=len(records), open=opens[-1] if opens else 0,
        open_min=min(opens) if opens else 0, pings=pings, rtt_ms=rtt, failures=failures, timeouts=timeouts,
        saturated_s=saturated, passed=passed, reasons=tuple(reasons), cause=cause, misses=tuple(misses),
    )


def slo_misses(level: int, slo: Slo, *, reached: bool, placed: int | None, opened: int,
               failures: Mapping[str, int], pings: int, timeouts: int, rtt: Percentiles, saturated_s: int,
               seconds: int) -> list[Miss]:
    """Every criterion of the SLO a plateau missed, with its number, in the order its reasons are said."""
    misses = []
    if placed is not None and placed < level:
        misses.append(Miss(metric="routes", value=placed, limit=level,
                           reason=f"the routes hold at most {placed:,} connections"))
    elif not reached:
        misses.append(Miss(metric="open", value=opened, limit=level,
                           reason=f"the ramp did not reach {level:,} (got {opened:,})"))
    total = sum(failures.values())
    if total > slo.failures:
        top = ", ".join(f"{k}={v:,}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1])[:3])
        misses.append(Miss(metric="failures", value=total, limit=slo.failures,
                           reason=f"{total:,} failures (SLO {slo.failures}): {top}"))
    if pings and timeouts / pings > slo.timeout_rate:
        misses.append(Miss(metric="timeout_rate", value=round(timeouts / pings, 6), limit=slo.timeout_rate,
                           reason=f"timeouts {timeouts / pings:.4f} of pings (SLO {slo.timeout_rate:g})"))
    if rtt.p99 is not None and rtt.p99 > slo.p99_ms:
        misses.append(Miss(metric="p99_ms", value=rtt.p99, limit=slo.p99_ms,
                           reason=f"p99 RTT {rtt.p99:.1f} ms (SLO {slo.p99_ms:g} ms)"))
    if reached and rtt.p99 is None and level > 0 and seconds:
        misses.append(Miss(metric="pongs", value=0, limit=None, reason="no pong at all during the plateau"))
    if saturated_s > slo.saturated_s:
        misses.append(Miss(metric="saturated_s", value=saturated_s, limit=slo.saturated_s,
                           reason=f"connscale's client workers saturated for {saturated_s} s: "
                                  "not a measurement of the server"))
    return misses


def plateau_misses(plateau: Plateau, slo: Slo) -> tuple[Miss, ...]:
    """What a judged plateau missed: as judged, or (one written before `misses` existed) from its fields."""
    if plateau.misses or plateau.passed:
        return plateau.misses
    # What the routes could place was not kept then; a ramp they stopped reached it.
    routes = not plateau.reached and plateau.cause is not None and plateau.cause.wall == "routes"
    return tuple(slo_misses(
        plateau.level, slo, reached=plateau.reached, placed=plateau.open if routes else None, opened=plateau.open,
        failures=plateau.failures, pings=plateau.pings, timeouts=plateau.timeouts, rtt=plateau.rtt_ms,
        saturated_s=plateau.saturated_s, seconds=plateau.seconds))


#: How a miss's number is written in the capacity line.
_MISS_FORMATS = {"p99_ms": "{:,.1f} ms", "timeout_rate": "{:.4f}", "saturated_s": "{:,.0f} s"}


def capacity_line(result: SearchResult) -> str:
    """The search as a capacity: "largest count meeting the SLO: N (the next step, M, failed on
    METRIC = VALUE)". Read from the curve, so a result written before this line existed says it too."""
    first_fail = next((p for p in result.curve if p.level == result.failed_at and not p.passed), None)
    failed = ""
    if first_fail is not None:
        miss = next(iter(plateau_misses(first_fail, result.slo)), None)
        what = "the next step" if result.knee else "the first step"
        on = ""
        if miss is not None:
            value = "-" if miss.value is None else _MISS_FORMATS.get(miss.metric, "{:,.0f}").format(miss.value)
            on = f", failed on {miss.metric} = {value}"
        failed = f" ({what}, {first_fail.level:,}{on})"
    elif result.knee and result.curve and all(p.passed for p in result.curve):
        failed = " (every step passed, up to the search's upper bound, scenario.target)"
    if not result.knee:
        return f"no count met the SLO{failed}"
    return f"largest count meeting the SLO: {result.knee:,}{failed}"


def _relevant(incidents: Sequence[Incident], failures: Mapping[str, int], t0: float, t1: float) -> list[Incident]:
    """The incidents that explain a plateau: those opened during it, else earlier ones
    (an incident opens once per wall) whose failure causes this plateau saw again."""
    during = [i for i in incidents if t0 <= i.elapsed_s <= t1 + 1.0]
    if during:
        return during
    return [i for i in incidents if set(i.failures) & set(failures)]


def _cause(records: Sequence[Stats], incidents: Sequence[Incident], saturated: bool, rtt: Percentiles,
           reasons: Sequence[str]) -> Cause:
    """The wall behind a failed plateau: its incidents first, else what the load says."""
    if saturated:
        mine = [i for i in incidents if i.wall == "measuring_side"]
        if mine:
            return Cause.of(mine[0])
        return Cause("measuring_side", "client", "connscale's own client workers were saturated during the plateau",
                     fix_of("measuring_side").fix)
    incident = primary_incident(incidents)
    if incident is not None:
        return Cause.of(incident)
    server = [r.load.server for r in records if r.load.server is not None]
    client = [r.load.client for r in records if r.load.client is not None]
    if any(s.saturated or s.silent for s in server):
        return Cause("server_starved", "server", "the server's workers were saturated: it answers too late at this count",
                     fix_of("no_answer_from_server").fix)
    # A pong waits in the socket as long as its reader's loop is late: whose loop
    # lag is of the order of the p99 explains the latency.
    p99 = rtt.p99 or 0.0
    client_lag = max((c.lag_ms_max for c in client), default=0.0)
    server_lag = max((s.lag_ms_max for s in server), default=0.0)
    if p99 and client_lag >= 0.5 * p99 and client_lag >= server_lag:
        return Cause("measuring_side", "client",
                     f"connscale's client loops ran up to {client_lag:.0f} ms late, of the order of the "
                     f"p99 of {p99:.0f} ms: the latency is largely connscale's own",
                     fix_of("measuring_side").fix)
    if p99 and server_lag >= 0.5 * p99:
        return Cause("server_starved", "server",
                     f"the server's loops ran up to {server_lag:.0f} ms late, of the order of the p99 "
                     f"of {p99:.0f} ms: it answers too late at this count",
                     fix_of("no_answer_from_server").fix)
    return Cause("unknown", "", "; ".join(reasons) + " (neither side's loop lag explains it: the host's other load, "
                 "the kernel, or the network)", fix_of("unknown").fix)


def explain_search(search: Search, plateaus: Sequence[Plateau], slo: Slo, stopped: str = "") -> SearchResult:
    """What summary.json says of a search: the knee, its cause, the curve."""
    knee = search.knee
    above = [p for p in plateaus if not p.passed and p.level > knee]
    first_fail = min(above, key=lambda p: p.level) if above else None
    at_knee = next((p for p in plateaus if p.passed and p.level == knee), None)
    saturated = any(p.cause is not None and p.cause.wall == "measuring_side" for p in plateaus if not p.passed)
    if knee == 0:
        headline = f"no plateau passed the SLO, not even {search.start:,} connections"
    elif search.reached_target:
        headline = f"sustained the upper bound, {knee:,} connections (scenario.target): no knee below it"
    else:
        headline = f"the largest sustainable count is {knee:,} connections"
    if at_knee is not None and at_knee.rtt_ms.p99 is not None:
        headline += f" (p99 RTT {at_knee.rtt_ms.p99:.1f} ms)"
    if first_fail is not None and first_fail.cause:
        headline += f"; at {first_fail.level:,}: {first_fail.cause.headline}"
    if stopped:
        headline += f"; the search stopped early: {stopped}"
    if saturated:
        headline += "; connscale's client workers saturated there, so the knee is connscale's, not the server's"
    result = SearchResult(
        knee=knee,
        failed_at=first_fail.level if first_fail else None,
        cause=first_fail.cause if first_fail else None,
        headline=headline,
        measuring_side_saturated=saturated,
        slo=slo,
        curve=tuple(sorted(plateaus, key=lambda p: p.index)),
        stopped=stopped,
    )
    return attrs.evolve(result, capacity=capacity_line(result))
