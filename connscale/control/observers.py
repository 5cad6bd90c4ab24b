"""The hub's side of the observers: who watches which server, and their latest readings.

Observers log in like agents (`agent:NAME`, the agent key) and register with
`observe` instead of `register`: they are kept in a `Registry` of their own, so
they never take a client's name, never count as a client and are never given
connections. The collector asks each one for its report in the same round as the
agents (one question at a time, answered within the round's wait or counted
with its last report, marked stale), and puts the rows beside the clients' in
every timeline line (`observers`). Events an observer saw (a target that exited,
restarted, was replaced) are timed on the hub's clock as they arrive, said in
the run's event log, and kept for the summary and the verdict.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from connscale.records.packed import PackError, unpack
from connscale.records.base import RecordError
from connscale.control.records import AgentInfo
from connscale.control.registry import AgentHandle, Registry
from connscale.host.observed import MAX_TARGET_EVENTS, ObservedEvent, ObserverReport, ObserverRow


class Observers:
    def __init__(self, clock: IReactorTime, note: Callable[[str], None], started: float, lost_after: float = 5.0,
                 fresh: float = 0.5) -> None:
        self.clock = clock
        self.note = note
        self.started = started
        self.lost_after = lost_after
        self.fresh = fresh
        self.registry = Registry(clock, note, kind="observer")
        self.reports: dict[str, ObserverReport] = {}
        #: Every target event so far (the first MAX_TARGET_EVENTS), timed on the hub's clock.
        self.events: list[ObservedEvent] = []

    def register(self, name: str, mind: Any, info: AgentInfo) -> dict[str, Any]:
        _, answer = self.registry.register(name, mind, info)
        return answer.to_wire()

    def detached(self, name: str, mind: Any) -> None:
        self.registry.detached(name, mind)

    # -- polling --------------------------------------------------------------------------
    def poll(self) -> list[defer.Deferred[None]]:
        """Ask every live observer that has no question outstanding and no fresh report; the
        questions out (the caller follows them without touching their results)."""
        now = self.clock.seconds()
        calls = []
        for handle in self.registry.live():
            if now - handle.answered_at >= self.lost_after + 1.0:
                self.registry.lost(handle, f"no answer for {now - handle.answered_at:.0f} s")
                continue
            if handle.asking is not None and handle.asked_of is handle.mind:
                calls.append(handle.asking)
                continue
            if handle.reported_at is not None and now - handle.reported_at < self.fresh:
                continue
            calls.append(self._ask(handle))
        return calls

    def _ask(self, handle: AgentHandle) -> defer.Deferred[None]:
        def got(data: object) -> None:
            try:
                report = ObserverReport.from_wire(unpack(data))
            except (RecordError, PackError) as e:
                self.note(f"observer {handle.name}: report refused: {e}")
                return
            self.reports[handle.name] = report
            handle.reported_at = self.clock.seconds()
            at = round(self.clock.seconds() - self.started, 3)
            for event in report.events:
                text = event.describe(at)
                self.note(f"observer {handle.name}: {text}")
                if len(self.events) < MAX_TARGET_EVENTS:
                    self.events.append(ObservedEvent(**attrs.asdict(event, recurse=False), observer=handle.name,
                                                     elapsed_s=at, text=text))

        def failed(_: Any) -> None:
            silent = self.clock.seconds() - handle.answered_at
            if handle.connected and silent >= self.lost_after:
                self.registry.lost(handle, f"no answer for {silent:.0f} s")

        asking = handle.call(self.clock, "report_packed", timeout=self.lost_after).addCallbacks(got, failed)
        handle.asking, handle.asked_of = asking, handle.mind

        def settled(result: Any) -> Any:
            if handle.asking is asking:
                handle.asking = handle.asked_of = None
            return result

        asking.addBoth(settled)
        return asking

    # -- what the timeline shows ---------------------------------------------------------
    def rows(self, round_at: float | None) -> dict[str, ObserverRow]:
        """name -> its session and latest report (without its events: those are the line's
        `target_events`), `stale_s` 0.0 when the report is this round's."""
        now = self.clock.seconds()
        out = {}
        for name, handle in sorted(self.registry.agents.items()):
            stale: float | None = None
            if handle.reported_at is not None:
                since = (round_at if round_at is not None else now) - self.fresh
                stale = 0.0 if handle.reported_at > since else round(now - handle.reported_at, 1)
            out[name] = ObserverRow.of(self.reports.get(name), connected=handle.connected,
                                       login_host=handle.info.host if handle.info else "",
                                       lost_reason=handle.lost_reason, stale_s=stale)
        return out

    def cost_readings(self) -> list[tuple[str, object, dict[str, Any]]]:
        """(kind, key, resources) of every connected observer's own process (metrics.cost)."""
        return [("observers", name, report.resources) for name, report in sorted(self.reports.items())
                if name in self.registry.agents and self.registry.agents[name].connected and report.resources]
