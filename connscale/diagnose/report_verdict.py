"""The run report's verdict in plain words: what happened, why, and the fix.

What the verdict says is decided here, one small function per paragraph; how it reads is
`templates/report.html`. Each paragraph the page may say is a field of `Verdict`, None (or
empty) when it is not said, so the template only places what it is given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from connscale.diagnose.curve import CurvePoint, Knee
from connscale.diagnose.fixes import advise
from connscale.diagnose.records import Explanation, Summary
from connscale.diagnose.report_numbers import Number, Numbers, Shown, gather_incidents
from connscale.diagnose.runfiles import RunFiles
from connscale.diagnose.search import capacity_line
from connscale.metrics.series import run_end


@attrs.frozen
class ExplanationWords:
    """The diagnosis: the wall that was hit, its evidence and its fix."""

    headline: str | None  # capitalised; None: not said (a held run's headline that names no wall)
    wall: str | None      # the wall's id when one is named
    side: str
    evidence: tuple[str, ...]
    fix: tuple[str, ...]
    measuring_side_saturated: bool


@attrs.frozen
class FailureWords:
    """The top failure causes (phase:cause and how many), and what the first means and its fix."""

    listed: tuple[tuple[str, Shown], ...]
    cause: str
    advice: str


@attrs.frozen
class KneeWords:
    baseline_p99: Shown
    before_open: Shown
    p99: Shown
    open: Shown


@attrs.frozen
class Verdict:
    css: str                     # held, failed or unknown: the section's and the badge's colour
    record: str                  # run, hub (a hub's own record) or none (no summary.json)
    hub_headline: str | None     # a hub record's explanation, in its opening words
    problems: tuple[str, ...]    # what could not be read
    held: bool                   # the "Held N connections" paragraph
    stopped_because: str | None  # the "Stopped at" paragraph's reason
    capacity: str | None         # a search's capacity line
    explanation: ExplanationWords | None
    failures: FailureWords | None
    no_failure: bool             # a run that did not hold, with no failure to blame
    knee: KneeWords | None
    curve: tuple[Shown, Shown] | None  # the curve's first and last counts, when it has no knee


def verdict(run: RunFiles, nums: Numbers, knee: Knee | None, points: Sequence[CurvePoint]) -> Verdict:
    summary = run.summary
    word, explanation = _judged(summary)
    if explanation is None and summary is not None and word in ("held", "failed"):
        explanation = derive_explanation(run, summary, int(nums["peak_open"].value or 0))
    said = explanation is not None and bool(explanation.headline)
    fixed = explanation is not None and bool(explanation.fix)
    failures = _failure_words(run) if word != "held" and not fixed else None
    return Verdict(
        css={"held": "held", "failed": "failed"}.get(word, "unknown"),
        record="none" if summary is None else "hub" if summary.kind == "hub" else "run",
        hub_headline=_hub_headline(summary),
        problems=run.problems,
        held=word == "held",
        stopped_because=(summary.reason or "no reason recorded")
        if summary is not None and word != "held" and not said else None,
        capacity=(summary.search.capacity or capacity_line(summary.search))
        if summary is not None and summary.search is not None else None,
        explanation=explanation_words(explanation, brief=word == "held") if explanation is not None else None,
        failures=failures,
        no_failure=word not in ("held", "unknown") and not fixed and failures is None,
        knee=_knee_words(knee),
        curve=(Number(points[0].open, "int").shown("curve.first_open"),
               Number(points[-1].open, "int").shown("curve.last_open")) if knee is None and len(points) >= 2 else None,
    )


def _judged(summary: Summary | None) -> tuple[str, Explanation | None]:
    """The verdict's word and the summary's explanation; a missing summary or a hub's record has neither."""
    if summary is None or summary.kind == "hub":
        return "unknown", None
    return summary.verdict, summary.explanation


def _hub_headline(summary: Summary | None) -> str | None:
    if summary is None or summary.kind != "hub" or summary.explanation is None:
        return None
    return summary.explanation.headline


def derive_explanation(run: RunFiles, summary: Summary, peak_open: int) -> Explanation:
    """A run whose summary has no explanation: explain it now, from the directory alone.

    `peak_open` is the timeline's (before the stop phase), so the words agree
    with the table beside them.
    """
    from connscale.diagnose.verdict import explain

    final = summary.rtt_final_hold_ms
    return explain(
        summary.verdict, summary.target, held=summary.held, peak_open=peak_open, reason=summary.reason,
        incidents=gather_incidents(run), preflight=summary.preflight,
        rtt=final if final.p50 is not None else summary.rtt_ms, losses=summary.worker_losses,
        target_events=summary.target_events,
    )


def explanation_words(explanation: Explanation, brief: bool = False) -> ExplanationWords:
    """The diagnosis as the page says it. `brief` (a held run, already summed up in words)
    leaves out a headline that names no wall."""
    wall = explanation.wall
    named = bool(wall) and wall not in ("none", "unknown")
    headline: str | None = explanation.headline
    if brief and not named:
        headline = None
    # Evidence the headline already says (the run's reason, when no wall was named) is said once.
    evidence = tuple(x for x in explanation.evidence
                     if not headline or x.removeprefix("the run stopped because: ") not in headline)
    return ExplanationWords(
        headline=headline[:1].upper() + headline[1:] if headline else None,
        wall=wall if named else None, side=explanation.side, evidence=evidence, fix=explanation.fix,
        measuring_side_saturated=explanation.measuring_side_saturated,
    )


def _top_causes(failures: Mapping[str, int], n: int = 3) -> list[tuple[str, int]]:
    ranked = sorted(((k, int(v)) for k, v in failures.items() if int(v)), key=lambda kv: -kv[1])
    return ranked[:n]


def _failure_words(run: RunFiles) -> FailureWords | None:
    """The run's top failure causes (the summary's, else its timeline's last live second's)."""
    failures = (run.summary.failures if run.summary is not None else {}) or \
        (run.records[run_end(run.records)].failures() if run.records else {})
    top = _top_causes(failures)
    if not top:
        return None
    cause = top[0][0].rsplit(":", 1)[-1]
    return FailureWords(tuple((k, Number(v, "int").shown("failures." + k)) for k, v in top), cause, advise(cause))


def _knee_words(knee: Knee | None) -> KneeWords | None:
    if knee is None:
        return None
    return KneeWords(Number(knee.baseline_p99, "ms").shown("knee.baseline_p99"),
                     Number(knee.before_open, "int").shown("knee.before_open"),
                     Number(knee.p99, "ms").shown("knee.p99"), Number(knee.open, "int").shown("knee.open"))
