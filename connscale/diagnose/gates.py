"""What a run was judged against, as typed records: its thresholds and its baseline.

`ThresholdResult` is one threshold (`held >= 500000`) as evaluated on the run's
headline metrics (`diagnose.thresholds`); `BaselineResult` is the run against an
earlier one (`diagnose.baseline`): one `MetricCheck` per metric compared, and the
settings that differ between the two hosts (`Difference`, from their manifests:
`diagnose.hostdiff`). Both land in `summary.json` (`Summary.thresholds`,
`Summary.baseline`), in the JUnit file and in the report. `Difference` also makes
the manifest table of `connscale compare`, one value per run.
"""

from __future__ import annotations

import attrs

from connscale.records.base import Record, boolean, choice, field, nested, number, optional, seq, text
from connscale.metrics.records import TEXTS

#: How a threshold compares the measured value with its limit.
OPERATORS = (">=", "<=", ">", "<", "==", "!=")
#: Which way a metric is better.
BETTER = ("higher", "lower")

_VALUE = optional(number(-1e18, 1e18))
_NAME = text(64)


@attrs.frozen(kw_only=True)
class ThresholdResult(Record):
    """One threshold, as written and as evaluated."""

    expression: str = field(text(256), doc="the threshold as written, e.g. held >= 500000")
    source: str = field(text(64), default="", doc="where it was written: scenario.thresholds[N] or --threshold")
    metric: str = field(_NAME, doc="the headline metric it reads")
    op: str = field(choice(*OPERATORS), doc="the comparison")
    limit: float = field(number(-1e18, 1e18), doc="the limit, in the metric's unit")
    unit: str = field(text(8), default="", doc="the metric's unit")
    value: float | None = field(_VALUE, default=None, doc="what the run measured (None: not measured)")
    passed: bool = field(boolean, doc="the measured value meets the limit (never when not measured)")
    note: str = field(text(512), default="", doc="why it could not be evaluated (empty when it was)")


@attrs.frozen(kw_only=True)
class MetricCheck(Record):
    """One headline metric of a run against the same metric of its baseline."""

    metric: str = field(_NAME, doc="the metric")
    unit: str = field(text(8), default="", doc="its unit")
    better: str = field(choice(*BETTER), doc="which way it is better")
    baseline: float | None = field(_VALUE, default=None, doc="the baseline's value (None: not measured there)")
    value: float | None = field(_VALUE, default=None, doc="this run's value (None: not measured here)")
    change_pct: float | None = field(_VALUE, default=None,
                                     doc="(value - baseline) / baseline in %, None when either is missing or "
                                         "the baseline is 0")
    tolerance_pct: float = field(number(0, 1e9), doc="how far worse it may be, in % of the baseline")
    outcome: str = field(choice("pass", "regressed", "skipped"), doc="pass, regressed, or skipped (not comparable)")
    note: str = field(text(512), default="", doc="why it was skipped, or how it regressed, in words")

    @property
    def regressed(self) -> bool:
        return self.outcome == "regressed"


@attrs.frozen
class Difference(Record):
    """One setting of the hosts' manifests that is not the same in every run."""

    key: str = field(text(512), doc="its dotted name: host.kernel, sysctls.net.core.somaxconn, config.scenario.target")
    values: tuple[str | None, ...] = field(seq(optional(text(4096)), 64),
                                           doc="its value in each run, in order (None: absent there)")


@attrs.frozen(kw_only=True)
class BaselineResult(Record):
    """A run against the earlier run it was told to match (`connscale run --baseline`)."""

    run_dir: str = field(text(4096), doc="the baseline's run directory")
    tolerance_pct: float = field(number(0, 1e9), doc="the tolerance of every metric without its own")
    checks: tuple[MetricCheck, ...] = field(seq(nested(MetricCheck), 256), default=(),
                                            doc="one per metric compared")
    changed: tuple[Difference, ...] = field(seq(nested(Difference), 4096), default=(),
                                            doc="settings of the hosts that differ: (baseline, this run)")
    lacks: tuple[str, ...] = field(TEXTS, default=(), doc="what the baseline directory lacks or could not be read")

    @property
    def regressions(self) -> tuple[MetricCheck, ...]:
        return tuple(c for c in self.checks if c.regressed)

    @property
    def passed(self) -> bool:
        return not self.regressions
