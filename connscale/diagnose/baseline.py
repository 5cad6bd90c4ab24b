"""A run against an earlier one: which metrics got worse beyond a tolerance, and what changed.

`connscale run --baseline RUN_DIR [--tolerance 10%]` holds a release to what an earlier
run measured. Each metric the registry marks `baseline` (held, a search's capacity,
failures, the hold's p99, the ramp rate: what a release is held to), and every metric
given its own tolerance (`--tolerance mem_per_conn_server=20%`), is compared: it regresses when it is
worse than the baseline's value by more than the tolerance, in % of the baseline (a
lower-is-better metric whose baseline is 0 regresses at any value above 0). A metric
either run did not measure is skipped and says so (a ramp against a search). The
result names the hosts' differences too (`diagnose.hostdiff`), so a regression and its
likely cause are said together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from connscale.diagnose.gates import BaselineResult, MetricCheck
from connscale.diagnose.headline import BY_NAME, METRICS, Metric
from connscale.diagnose.hostdiff import diff
from connscale.diagnose.thresholds import valid_metrics
from connscale.diagnose.units import parse_percent

DEFAULT_TOLERANCE = 10.0


@attrs.frozen
class Tolerances:
    """The tolerance of every compared metric: one default, and any metric's own."""

    default: float = DEFAULT_TOLERANCE
    own: Mapping[str, float] = attrs.field(factory=dict)

    def of(self, metric: str) -> float:
        return self.own.get(metric, self.default)

    def compared(self) -> list[Metric]:
        """The metrics compared: the registry's baseline ones, and every one given its own tolerance."""
        return [m for m in METRICS if m.baseline or m.name in self.own]


def parse_tolerances(given: Sequence[str], source: str = "--tolerance") -> tuple[Tolerances, list[str]]:
    """`10%` sets the default, `METRIC=PCT` one metric's; every problem one line."""
    default = DEFAULT_TOLERANCE
    own: dict[str, float] = {}
    problems = []
    for text in given:
        name, eq, pct = text.rpartition("=")
        try:
            value = parse_percent(pct if eq else text)
        except ValueError as e:
            problems.append(f"{source} {text!r}: {e}")
            continue
        if not eq:
            default = value
        elif name.strip() in BY_NAME:
            own[name.strip()] = value
        else:
            problems.append(f"{source} {text!r}: unknown metric '{name.strip()}'; valid metrics: {valid_metrics()}")
    return Tolerances(default, own), problems


def change_pct(value: float, baseline: float) -> float | None:
    """(value - baseline) / baseline in %, None when the baseline is 0 (no share of nothing)."""
    if baseline == 0:
        return 0.0 if value == 0 else None
    return round((value - baseline) / abs(baseline) * 100.0, 1)  # as it is shown: no second rounding


def check(metric: Metric, value: float | None, baseline: float | None, tolerance: float) -> MetricCheck:
    skipped = MetricCheck(metric=metric.name, unit=metric.unit.symbol, better=metric.better, baseline=baseline,
                          value=value, tolerance_pct=tolerance, outcome="skipped")
    if value is None or baseline is None:
        where = "either run" if value is None and baseline is None else ("this run" if value is None else
                                                                          "the baseline")
        return attrs.evolve(skipped, note=f"not measured in {where}")
    pct = change_pct(value, baseline)
    if metric.better == "higher":
        regressed = value < baseline * (1 - tolerance / 100.0)
    else:
        regressed = value > baseline * (1 + tolerance / 100.0) if baseline > 0 else value > baseline
    note = ""
    if regressed:
        by = f"{abs(pct):.1f}% worse" if pct is not None else "worse (the baseline had none)"
        note = (f"{metric.format(value)} against {metric.format(baseline)}: {by} "
                f"(tolerance {tolerance:g}%, {metric.better} is better)")
    return attrs.evolve(skipped, change_pct=pct, outcome="regressed" if regressed else "pass", note=note)


def compare(measured: Mapping[str, float], manifest: Mapping[str, Any] | None,
            base_measured: Mapping[str, float], base_manifest: Mapping[str, Any] | None,
            run_dir: str, tolerances: Tolerances, lacks: Sequence[str] = ()) -> BaselineResult:
    """This run (`measured`, `manifest`) against the baseline's."""
    # A metric neither run measured (a ramp's search capacity) says nothing either way: left out.
    checks = tuple(check(m, measured.get(m.name), base_measured.get(m.name), tolerances.of(m.name))
                   for m in tolerances.compared() if m.name in measured or m.name in base_measured)
    return BaselineResult(run_dir=run_dir, tolerance_pct=tolerances.default, checks=checks,
                          changed=diff([base_manifest, manifest]), lacks=tuple(lacks))


def describe(c: MetricCheck) -> str:
    """`FAIL held: 750 against 1,500: 50.0% worse (tolerance 10%, higher is better)`: one line."""
    metric = BY_NAME.get(c.metric)
    if c.outcome == "skipped":
        return f"SKIP {c.metric}: {c.note}"
    if c.regressed:
        return f"FAIL {c.metric}: {c.note}"
    fmt = metric.format if metric is not None else (lambda v, symbol=True: f"{v:g}")
    change = f"{c.change_pct:+.1f}%" if c.change_pct is not None else "from 0"
    return f"PASS {c.metric}: {fmt(c.value)} against {fmt(c.baseline)} ({change}, tolerance {c.tolerance_pct:g}%)"
