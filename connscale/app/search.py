"""`scenario.mode: search`: step up plateau by plateau until one fails its SLO, then narrow down.

Each plateau: move the agent's target to the level (the ramp phase), hold it
for `scenario.search_plateau` ping intervals (the `plateau:K` phase, so the
timeline's seconds say which plateau they belong to), then judge the plateau
on those seconds (`connscale.diagnose.search.judge`: p99 RTT, timeouts,
failures, connscale's own saturation). `Search` picks the next level; the
result is the knee, its cause and the curve, in `summary.json` under
`search`. Failures do not stop a search (they are what it looks for); the
time limit, a dead child or a silent hub do, and the result then says how far
it got.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import defer

from connscale.app.scenario import AGENT_REGISTER_TIMEOUT, STEP_DEADLINE_FACTOR, STEP_SLACK, RunError, Scenario
from connscale.diagnose.records import SearchResult
from connscale.diagnose.search import Plateau, Search, Slo, explain_search, judge
from connscale.metrics import phases
from connscale.metrics.records import Stats
from connscale.metrics.timeline import read_timeline


def plateau(k: int) -> str:
    return f"plateau:{k}"


class SearchScenario(Scenario):
    def __init__(self, *args: Any, timeline: Path, interval: float, **kw: Any) -> None:
        super().__init__(*args, **kw)
        sc = self.settings
        self.timeline = timeline
        self.interval = interval
        self.slo = Slo(p99_ms=sc.slo_p99_ms, timeout_rate=sc.slo_timeout_rate, failures=sc.slo_failures)
        self.search = Search(sc.search_start, sc.target, sc.search_growth, sc.search_resolution)
        self.plateaus: list[Plateau] = []
        self.stopped = ""

    def check(self) -> None:
        # Failures are what a search looks for: they fail a plateau, not the run.
        self.health()
        if self.clock.seconds() - self.progress.started > self.settings.time_limit:
            raise RunError(f"scenario.time_limit of {self.settings.time_limit:g}s reached")

    def result(self) -> SearchResult:
        return explain_search(self.search, self.plateaus, self.slo, self.stopped)

    def records(self, phase: str) -> tuple[list[Stats], Stats | None]:
        """The timeline seconds of `phase`, and the second just before them."""
        try:
            records = list(read_timeline(self.timeline))
        except OSError:
            return [], None
        mine = [i for i, r in enumerate(records) if r.phase == phase]
        if not mine:
            return [], None
        before = records[mine[0] - 1] if mine[0] > 0 else None
        return [records[i] for i in mine], before

    @defer.inlineCallbacks
    def execute(self):
        p = self.progress
        self.enter(phases.SETUP)
        if not (yield self.watch(AGENT_REGISTER_TIMEOUT, until=self.agent_connected)):
            raise RunError(f"the local agent did not register within {AGENT_REGISTER_TIMEOUT:g} s")
        current = 0
        k = 0
        try:
            while (level := self.search.next_level()) is not None:
                k += 1
                p.step = k
                self.enter(phases.ramp(k))
                if level > current:
                    placed = yield self.hub.call("connections_start", level - current, self.agent)
                else:
                    placed = yield self.hub.call("connections_stop", current - level, self.agent)
                placed = int(placed)
                current = p.step_target = min(level, placed)
                deadline = abs(level - p.open) / self.settings.rate * STEP_DEADLINE_FACTOR + STEP_SLACK
                goal = current
                reached = yield self.watch(deadline, until=lambda: abs(p.open - goal) <= max(1, goal // 200))
                reached = reached and current == level
                if reached:
                    self.enter(plateau(k))
                    yield self.watch(self.settings.search_plateau * self.interval)
                    self.enter(f"judge:{k}")
                    # The hub writes a second after it ends: let the plateau's last one land.
                    yield self.watch(1.0)
                records, before = self.records(plateau(k) if reached else phases.ramp(k))
                incidents = list(p.stats.incidents) if p.stats is not None else []
                result = judge(k, level, records, self.slo, reached=reached, before=before, incidents=incidents,
                               placed=placed)
                self.plateaus.append(result)
                self.search.report(level, result.passed)
                verdict = "passed" if result.passed else "failed: " + "; ".join(result.reasons)
                p.events.append(f"plateau {k} at {level:,}: {verdict}")
                self.show(p)
        except RunError as e:
            self.stopped = str(e)
        p.held = self.search.knee
        self.close_phases()
