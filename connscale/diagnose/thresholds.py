"""Thresholds: `METRIC OP LIMIT` lines a run must meet (`scenario.thresholds`, `run --threshold`).

`parse` reads one line (`held >= 500000`, `hold_p99_ms <= 20`, `mem_per_conn_server <= 2KB`,
`search.capacity >= 800k`) against the metric registry (`diagnose.headline`): an unknown
metric names the valid ones, a limit in a unit of another kind is refused, each problem
one line naming where the threshold was written. `evaluate` judges a run's measured
metrics: a metric the run did not measure fails its threshold (a gate that cannot be
checked must not pass), and says why.
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable, Mapping, Sequence

import attrs

from connscale.diagnose.gates import OPERATORS, ThresholdResult
from connscale.diagnose.headline import BY_NAME, METRICS, Metric

_LINE = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(>=|<=|==|!=|>|<)\s*(.+?)\s*")
_COMPARE: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne,
}
assert set(_COMPARE) == set(OPERATORS)


class ThresholdError(ValueError):
    """A threshold that cannot be read; `str()` is one line naming where it was written."""


@attrs.frozen
class Threshold:
    """One threshold as read: the metric, the comparison and the limit in the metric's unit."""

    expression: str
    source: str
    metric: Metric
    op: str
    limit: float


def valid_metrics() -> str:
    return ", ".join(m.name for m in METRICS)


def parse(expression: str, source: str) -> Threshold:
    """One threshold; ThresholdError (one line, starting with `source`) if it cannot be read."""
    match = _LINE.fullmatch(expression)
    if not match:
        raise ThresholdError(f"{source}: {expression!r}: expected METRIC OP LIMIT, e.g. 'held >= 500000' "
                             f"(OP one of {' '.join(OPERATORS)})")
    name, op, limit_text = match.groups()
    metric = BY_NAME.get(name)
    if metric is None:
        close = difflib.get_close_matches(name, list(BY_NAME), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ThresholdError(f"{source}: unknown metric '{name}'{hint}; valid metrics: {valid_metrics()}")
    try:
        limit = metric.unit.parse(limit_text)
    except ValueError as e:
        raise ThresholdError(f"{source}: {expression.strip()!r}: {name}: {e}") from None
    return Threshold(" ".join((name, op, limit_text)), source, metric, op, limit)


def parse_all(lines: Sequence[tuple[str, str]]) -> tuple[list[Threshold], list[str]]:
    """(expression, source) pairs -> the thresholds and every problem (one line each)."""
    thresholds, problems = [], []
    for expression, source in lines:
        try:
            thresholds.append(parse(expression, source))
        except ThresholdError as e:
            problems.append(str(e))
    return thresholds, problems


def evaluate(threshold: Threshold, measured: Mapping[str, float]) -> ThresholdResult:
    metric = threshold.metric
    value = measured.get(metric.name)
    if value is None:
        note = "not measured in this run" + (" (not a search)" if metric.name == "search.capacity" else "")
        passed = False
    else:
        note = ""
        passed = _COMPARE[threshold.op](value, threshold.limit)
    return ThresholdResult(expression=threshold.expression, source=threshold.source, metric=metric.name,
                           op=threshold.op, limit=threshold.limit, unit=metric.unit.symbol, value=value,
                           passed=passed, note=note)


def evaluate_all(thresholds: Sequence[Threshold], measured: Mapping[str, float]) -> tuple[ThresholdResult, ...]:
    return tuple(evaluate(t, measured) for t in thresholds)


def describe(result: ThresholdResult) -> str:
    """`PASS held >= 500000: measured 512,344 (limit 500,000)`: one line."""
    metric = BY_NAME.get(result.metric)
    fmt = metric.format if metric is not None else (lambda v, symbol=True: f"{v:g}")
    measured = f"measured {fmt(result.value)}" if result.value is not None else result.note or "not measured"
    return (f"{'PASS' if result.passed else 'FAIL'} {result.expression}: {measured} "
            f"(limit {result.op} {fmt(result.limit)})")
