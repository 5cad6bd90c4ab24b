"""`connscale run`'s gates: thresholds, a baseline and a JUnit file, from the options to the exit status.

Everything a gate needs is read before the run starts, so a typo costs a line, not a
run: the thresholds of `scenario.thresholds` and `--threshold` (an unknown metric is a
configuration error naming the key and the valid metrics), the `--tolerance`s, and the
`--baseline` directory (read as far as it goes; one with nothing to compare is refused).
When the run ends, `judge` measures its headline metrics, evaluates the thresholds and
compares with the baseline, all into the summary; `lines` is what the run prints under
its verdict; a failed gate makes the exit status 1, like a failed run (2 is a run that
could not start).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import attrs

from connscale.config.settings import Config
from connscale.diagnose import baseline as baselines
from connscale.diagnose import hostdiff
from connscale.diagnose import thresholds as thresholds_
from connscale.diagnose.headline import RunView, measure
from connscale.diagnose.junit import write_junit
from connscale.diagnose.records import Summary
from connscale.diagnose.runfiles import RunFiles, RunReadError, read_run
from connscale.metrics.records import Stats


class GateError(Exception):
    """The gate's options cannot be used; `problems` are one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", action="append", default=[], metavar="'METRIC OP LIMIT'",
                   help="a threshold the run must meet, e.g. 'held >= 500000' (repeatable; added to "
                        "scenario.thresholds); a failed one makes the exit status 1")
    p.add_argument("--baseline", metavar="RUN_DIR",
                   help="an earlier run directory: exit 1 when a metric is worse than there beyond --tolerance")
    p.add_argument("--tolerance", action="append", default=[], metavar="PCT|METRIC=PCT",
                   help="how much worse than the baseline a metric may be: 10%% (the default for every metric) "
                        "or METRIC=PCT for one metric, which it then compares too (repeatable)")
    p.add_argument("--junit", metavar="FILE",
                   help="write the thresholds and baseline comparisons as JUnit XML here (for CI)")


@attrs.frozen
class Gate:
    thresholds: tuple[thresholds_.Threshold, ...] = ()
    baseline: RunFiles | None = None
    tolerances: baselines.Tolerances = baselines.Tolerances()
    junit: Path | None = None


def from_options(cfg: Config, args: argparse.Namespace) -> Gate:
    """The gate of this run; GateError with every problem found."""
    written = [(t, f"scenario.thresholds[{i}]") for i, t in enumerate(cfg.scenario.thresholds)]
    written += [(t, "--threshold") for t in args.threshold]
    found, problems = thresholds_.parse_all(written)
    tolerances, more = baselines.parse_tolerances(args.tolerance)
    problems += more
    if args.tolerance and not args.baseline:
        problems.append("--tolerance: only with --baseline")
    base = None
    if args.baseline:
        try:
            base = read_run(args.baseline)
        except RunReadError as e:
            problems.append(f"--baseline: {e}")
        else:
            if base.summary is None and not base.records:
                problems.append(f"--baseline: {base.dir}: nothing to compare with ({'; '.join(base.missing_words())})")
    if problems:
        raise GateError(problems)
    return Gate(tuple(found), base, tolerances, Path(args.junit) if args.junit else None)


def judge(gate: Gate, summary: Summary, records: Sequence[Stats], manifest: dict | None) -> Summary:
    """The summary with its headline metrics, its thresholds evaluated and its baseline compared."""
    measured = measure(RunView(summary, records))
    judged = attrs.evolve(summary, metrics=measured,
                          thresholds=thresholds_.evaluate_all(gate.thresholds, measured))
    if gate.baseline is not None:
        base = gate.baseline
        result = baselines.compare(measured, manifest, measure(RunView(base.summary, base.records)), base.manifest,
                                   str(base.dir), gate.tolerances, base.missing_words())
        judged = attrs.evolve(judged, baseline=result)
    return judged


def lines(summary: Summary) -> list[str]:
    """What the run prints under its verdict: one line per threshold, per comparison, per change."""
    out = [f"threshold {thresholds_.describe(t)}" for t in summary.thresholds]
    b = summary.baseline
    if b is not None:
        for lack in b.lacks:
            out.append(f"baseline {b.run_dir}: {lack}")
        out += [f"baseline {baselines.describe(c)}" for c in b.checks]
        if b.regressions:
            changed = [hostdiff.describe(d) for d in b.changed]
            out += [f"changed since the baseline: {c}" for c in changed] or \
                ["changed since the baseline: nothing in the manifests (kernel, sysctls, rlimits, versions, "
                 "configuration are the same)"]
    if summary.thresholds or b is not None:
        failed = sum(1 for t in summary.thresholds if not t.passed)
        parts = []
        if summary.thresholds:
            parts.append(f"{failed} of {len(summary.thresholds)} thresholds failed")
        if b is not None:
            n = len(b.regressions)
            parts.append(f"{n} metric{'' if n == 1 else 's'} regressed against {b.run_dir}")
        out.append(f"gate: {'PASSED' if summary.gate_passed else 'FAILED'} ({'; '.join(parts)})")
    return out


def write(gate: Gate, summary: Summary) -> str | None:
    """Write the JUnit file if asked; one line saying where, or why not."""
    if gate.junit is None:
        return None
    try:
        return f"junit: {write_junit(summary, gate.junit)}"
    except OSError as e:
        return f"junit: not written ({gate.junit}: {e.strerror or e})"
