"""Runs side by side: every headline metric, its change against the first run, and what differs.

`connscale compare RUN_A RUN_B [...]` answers "did it get better, and by how much?". The
first run is the reference: each other run's metric gets its change in % of the
reference's and a direction, better or worse by the metric's own sense (`headline`).
Runs of different targets or modes compare where both measured a metric, and the
comparison says where they do not and why (`notes`). The hosts' differences
(`hostdiff`) come with it, so the page shows a change and its likely cause together.
The whole is a record: `--json` prints its wire form, the text table and the HTML page
(`compare_page`) are views of it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import attrs

from connscale.records.base import Record, choice, field, integer, nested, number, optional, seq, text
from connscale.diagnose.baseline import change_pct
from connscale.diagnose.gates import BETTER, Difference
from connscale.diagnose.headline import BY_NAME, METRICS, RunView, measure
from connscale.diagnose.hostdiff import diff, flatten
from connscale.diagnose.runfiles import RunFiles
from connscale.diagnose.search import capacity_line
from connscale.metrics.records import COUNT, TEXTS
from connscale.metrics.render import format_table

_VALUE = optional(number(-1e18, 1e18))
DIRECTIONS = ("", "better", "worse", "same")


@attrs.frozen(kw_only=True)
class RunInfo(Record):
    """One run of a comparison: where it is, what it was, what it lacks."""

    dir: str = field(text(4096), doc="its run directory")
    name: str = field(text(255), doc="the directory's name")
    started: float | None = field(_VALUE, default=None, doc="Unix time it began")
    verdict: str = field(text(16), default="", doc="held, failed or knee (empty: no summary)")
    mode: str = field(text(16), default="", doc="ramp or search (empty: no summary)")
    target: int | None = field(optional(COUNT), default=None, doc="scenario.target")
    duration_s: float | None = field(_VALUE, default=None, doc="seconds it took")
    capacity: str = field(text(4096), default="", doc="search mode: the capacity line")
    headline: str = field(text(4096), default="", doc="its explanation's headline")
    wall: str = field(text(32), default="", doc="the wall its explanation names")
    lacks: tuple[str, ...] = field(TEXTS, default=(), doc="what its directory lacks or could not be read")


@attrs.frozen(kw_only=True)
class MetricRow(Record):
    """One headline metric across the runs."""

    metric: str = field(text(64), doc="its name")
    unit: str = field(text(8), default="", doc="its unit")
    better: str = field(choice(*BETTER), doc="which way it is better")
    values: tuple[float | None, ...] = field(seq(_VALUE, 64), doc="its value in each run (None: not measured)")
    change_pct: tuple[float | None, ...] = field(
        seq(_VALUE, 64), doc="each run's change against the first, in % (None: the first, or not comparable)")
    direction: tuple[str, ...] = field(seq(choice(*DIRECTIONS), 64),
                                       doc="each run against the first: better, worse, same (empty: not comparable)")


@attrs.frozen(kw_only=True)
class Comparison(Record):
    """`connscale compare`'s answer."""

    runs: tuple[RunInfo, ...] = field(seq(nested(RunInfo), 64), doc="the runs, the reference first")
    metrics: tuple[MetricRow, ...] = field(seq(nested(MetricRow), 256), doc="every metric at least one run measured")
    notes: tuple[str, ...] = field(TEXTS, default=(), doc="where the runs do not compare, and why")
    manifest: tuple[Difference, ...] = field(seq(nested(Difference), 4096), default=(),
                                             doc="settings of the hosts that differ, one value per run")
    same_settings: int = field(integer(0, 1 << 30), default=0, doc="settings of the manifests equal in every run")


def _info(run: RunFiles) -> RunInfo:
    s = run.summary
    return RunInfo(
        dir=str(run.dir), name=run.name, started=run.started,
        verdict=s.verdict if s is not None else "",
        mode=("search" if s.search is not None else "ramp") if s is not None else "",
        target=s.target if s is not None else None,
        duration_s=s.duration_s if s is not None else None,
        capacity=(s.search.capacity or capacity_line(s.search)) if s is not None and s.search is not None else "",
        headline=s.explanation.headline if s is not None and s.explanation is not None else "",
        wall=s.explanation.wall if s is not None and s.explanation is not None else "",
        lacks=tuple(run.missing_words()),
    )


def _direction(better: str, value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return ""
    if value == reference:
        return "same"
    return "better" if (value > reference) == (better == "higher") else "worse"


def letters(n: int) -> list[str]:
    """How the runs are named on the page, the table and the legends: A, B, C, ..."""
    return [chr(ord("A") + i) if i < 26 else f"#{i + 1}" for i in range(n)]


def compare(runs: Sequence[RunFiles]) -> Comparison:
    """The runs against the first."""
    infos = [_info(r) for r in runs]
    names = letters(len(runs))
    measured = [measure(RunView(r.summary, r.records)) for r in runs]
    rows, notes = [], []
    for m in METRICS:
        values = tuple(v.get(m.name) for v in measured)
        if all(v is None for v in values):
            continue
        ref = values[0]
        rows.append(MetricRow(
            metric=m.name, unit=m.unit.symbol, better=m.better, values=values,
            change_pct=(None,) + tuple(change_pct(v, ref) if v is not None and ref is not None else None
                                       for v in values[1:]),
            direction=("",) + tuple(_direction(m.better, v, ref) for v in values[1:]),
        ))
        absent = [name for name, v in zip(names, values) if v is None]
        if absent:
            notes.append(f"{m.name}: not measured in {', '.join(absent)}")
    unmeasured = [m.name for m in METRICS if all(v.get(m.name) is None for v in measured)]
    if unmeasured:
        notes.insert(0, f"not measured in any run: {', '.join(unmeasured)}")
    modes = {i.mode for i in infos if i.mode}
    if len(modes) > 1:
        notes.insert(0, "the runs are of different modes (ramp and search): a ramp's held is its target held, "
                        "a search's is its knee; search.capacity exists for searches only")
    if len({i.target for i in infos if i.target is not None}) > 1:
        notes.insert(0, "the runs had different targets: held and peak_open count toward different goals")
    for name, run in zip(names, runs):
        if run.summary is None:
            notes.append(f"{name} left no readable summary.json: its metrics come from its timeline alone")
        elif not run.has_timeline:
            notes.append(f"{name} has no timeline.jsonl: it compares on what its summary wrote, without curves")
    manifests = [r.manifest for r in runs]
    without = [name for name, m in zip(names, manifests) if m is None]
    if without:
        notes.append(f"no manifest in {', '.join(without)}: its host is left out of the settings compared")
    differences = diff(manifests)
    return Comparison(runs=tuple(infos), metrics=tuple(rows), notes=tuple(notes), manifest=differences,
                      same_settings=_same_settings(manifests, differences))


def _same_settings(manifests: Sequence[dict | None], differences: Sequence[Difference]) -> int:
    present = [flatten(m) for m in manifests if m is not None]
    if len(present) < 2:
        return 0
    keys = set().union(*present)
    return len(keys) - len(differences)


# ----------------------------------------------------------------------------- the text table

def format_change(pct: float | None, direction: str) -> str:
    if not direction:
        return ""
    if direction == "same":
        return "same"
    return f"{pct:+.1f}% {direction}" if pct is not None else f"from 0, {direction}"


def started_text(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def text_table(c: Comparison) -> str:
    """The comparison on a terminal: the metrics (each run's value and its change), then notes and settings."""
    names = letters(len(c.runs))
    lines = [f"{name}: {r.dir} ({r.verdict or 'no summary'}, started {started_text(r.started)})"
             + (f"; {'; '.join(r.lacks)}" if r.lacks else "") for name, r in zip(names, c.runs)]
    rows = []
    for row in c.metrics:
        metric = BY_NAME[row.metric]
        cells: dict[str, str] = {"metric": row.metric, "unit": row.unit, "better": row.better}
        for i, (letter, value) in enumerate(zip(names, row.values)):
            cells[letter] = metric.format(value, symbol=False)
            if i:
                cells[f"{letter} vs A"] = format_change(row.change_pct[i], row.direction[i])
        rows.append(cells)
    columns = ["metric", "unit", "better"] + [x for i, letter in enumerate(names)
                                               for x in ([letter] if not i else [letter, f"{letter} vs A"])]
    lines += ["", format_table(rows, columns, right=names)]
    if c.notes:
        lines += [""] + [f"note: {n}" for n in c.notes]
    if c.manifest:
        lines += ["", "settings that differ:"]
        table = [{"setting": d.key, **{letter: "-" if v is None else v for letter, v in zip(names, d.values)}}
                 for d in c.manifest]
        lines.append(format_table(table, ["setting", *names]))
    elif len(c.runs) > 1:
        lines += ["", "settings that differ: none (kernel, sysctls, rlimits, versions and configuration are the same)"]
    return "\n".join(lines)
