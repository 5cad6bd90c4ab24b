"""The explanation a run ends with: held N, or stopped at N because of a wall, with the fix.

`explain` turns what a run knows at its end (outcome, the reason it stopped,
its incidents, the preflight budget) into the summary's `Explanation`
(`diagnose.records`): headline, wall, side, evidence, fix and whether
connscale's own clients were saturated.

Pure, so the report can re-derive it from a run directory alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import attrs

from connscale.diagnose.records import AgentLost, Explanation, Preflight, SearchResult
from connscale.diagnose.walls import listen_in_use
from connscale.diagnose.window import Finding
from connscale.host.observed import ObservedEvent
from connscale.metrics.histograms import Percentiles
from connscale.metrics.phases import is_hold
from connscale.metrics.records import Incident
from connscale.metrics.workers import WorkerLoss

#: Walls whose failures name their cause by themselves; they explain a stop
#: better than a saturation seen around the same time.
DEFINITE = frozenset({"fd_process", "fd_system", "ephemeral_ports", "routes", "server_down", "worker_lost",
                      "protocol", "tls", "memory", "conntrack", "listen_in_use", "server_cap", "server_refused"})

#: Budget limit keys -> wall ids.
BUDGET_WALLS: Mapping[str, str] = {
    "routes": "routes", "ephemeral_ports": "ephemeral_ports", "fd_process": "fd_process",
    "fd_system": "fd_system", "memory": "memory", "cpu": "cpu", "conntrack": "conntrack",
    "time_limit": "time_limit",
}


def primary_incident(incidents: Sequence[Incident]) -> Incident | None:
    """The incident that explains the run: the earliest definite one, else the earliest."""
    ordered = sorted(incidents, key=lambda i: i.elapsed_s)
    for incident in ordered:
        if incident.wall in DEFINITE:
            return incident
    return ordered[0] if ordered else None


def _from_reason(reason: str, target: int) -> Finding | None:
    """Stops that no incident covers, recognised from the run's one-line reason."""
    hub = listen_in_use(reason)
    if hub is not None:
        return hub
    m = re.search(r"routes hold at most (\d+)", reason)
    if m:
        return Finding("routes", "client", f"the routes hold at most {int(m.group(1)):,} connections",
                       (reason,), ("more source IPs (client.source_ips) or server ports (server.ports)",))
    if "time_limit" in reason:
        return Finding("time_limit", "run", "the run's time limit ran out before the target was held",
                       (reason,), ("a longer scenario.time_limit, or a faster scenario.rate if the hosts keep up",))
    return None


#: What a run's reason says when connscale's own processes ended it, and what that means.
_CONTROL = (
    ("interrupted", "interrupted", "the run was interrupted (Ctrl-C or SIGTERM) before it could finish",
     "run it again; what was recorded so far is in timeline.jsonl"),
    ("lost the connection to the hub", "control_plane",
     "connscale lost its own hub (the run's control connection broke)",
     "see the last lines of hub.log; on a saturated box give the hub and agent headroom (fewer workers per "
     "host, agents on other hosts)"),
    ("has not answered for", "control_plane", "connscale's own hub stopped answering",
     "see hub.log; the hub may be stopped or starved of CPU"),
    (" exited ", "control_plane", "one of connscale's own processes (hub or agent) exited during the run",
     "see its last lines in hub.log or agent.log"),
    ("did not register", "control_plane", "connscale's local agent did not register with the hub",
     "see agent.log"),
)


def _control_failure(reason: str) -> Finding | None:
    if listen_in_use(reason) is not None:
        return None
    for needle, wall, headline, fix in _CONTROL:
        if needle in reason:
            return Finding(wall, "connscale", headline, (reason,), (fix,))
    if re.match(r"^[A-Z][A-Za-z]*Error: ", reason):
        return Finding("control_plane", "connscale", "connscale itself failed (a bug)", (reason,),
                       ("report it with run directory's hub.log and agent.log",))
    return None


def losses_line(losses: Sequence[WorkerLoss]) -> str:
    """Workers that died during the run, in words: who, how, when, and what went with them.

    One: "a server worker (pid 123) was killed by signal 9 (SIGKILL) at 5 s; 511 connections
    were lost with it". Several: each named, with the total lost.
    """
    def one(loss: WorkerLoss, lead: bool) -> str:
        pid = loss.pid
        who = (f"a {loss.side} worker (pid {pid})" if lead else f"pid {pid}") if pid else \
            (f"a {loss.side} worker" if lead else "one")
        if loss.agent:
            who += f" on agent {loss.agent}"
        when = f" at {loss.elapsed_s:.0f} s" if loss.elapsed_s is not None else ""
        return f"{who} {loss.how}{when}"

    if not losses:
        return ""
    total = sum(loss.connections for loss in losses)
    if len(losses) == 1:
        return f"{one(losses[0], True)}; {total:,} connections were lost with it"
    sides = sorted({loss.side for loss in losses})
    listed = ", ".join(f"{one(loss, False)} ({loss.connections:,} connections)" for loss in losses[:3])
    more = f" and {len(losses) - 3} more" if len(losses) > 3 else ""
    return (f"{len(losses)} {' and '.join(sides)} workers died: {listed}{more}; "
            f"{total:,} connections were lost with them")


def target_events_line(events: Sequence[ObservedEvent]) -> str:
    """The observed server going away, in the hub's words ("redis-server (pid 41) exited at 41 s;
    restarted as pid 57"); a worker's churn under its master is not news here."""
    said = [e.text for e in events if e.kind in ("exited", "restarted", "replaced") and e.text]
    if not said:
        return ""
    more = f" and {len(said) - 3} more" if len(said) > 3 else ""
    return "; ".join(said[:3]) + more


def _rtt_line(rtt: Percentiles | None) -> str:
    if rtt is None or rtt.p50 is None or rtt.p99 is None:
        return ""
    return f" (RTT p50 {rtt.p50:.2f} ms, p99 {rtt.p99:.2f} ms)"


@attrs.define
class _Draft:
    """An explanation while its parts are added (`Explanation` is frozen)."""

    headline: str
    wall: str = "unknown"
    side: str = ""
    evidence: list[str] = attrs.Factory(list)
    fix: list[str] = attrs.Factory(list)

    def done(self, saturated: bool) -> Explanation:
        return Explanation(headline=self.headline, wall=self.wall, side=self.side, evidence=tuple(self.evidence),
                           fix=tuple(self.fix), measuring_side_saturated=saturated)


def _before_that(incidents: Sequence[Incident]) -> str:
    first = primary_incident(incidents) or incidents[0]
    return f"before that, at {first.elapsed_s:.0f} s ({first.open:,} open): {first.headline}"


def _agents_lost(target: int, peak_open: int, incidents: Sequence[Incident],
                 lost_agents: Sequence[AgentLost]) -> _Draft:
    """A lost agent ends a fleet run: its connections went with it, whatever else was seen."""
    gone = "; ".join(a.describe() for a in lost_agents)
    evidence = [a.describe() for a in lost_agents]
    if incidents:
        evidence.append(_before_that(incidents))
    return _Draft(
        headline=f"stopped at {peak_open:,} of {target:,} connections: {gone}", wall="agent_lost", side="client",
        evidence=evidence,
        fix=["see the lost agent's host: its log (the hub relays a launched agent's output as [NAME] "
             "lines in hub.log), its ssh session, its memory (an OOM kill)"])


def _refused_by_preflight(target: int, preflight: Preflight) -> _Draft:
    binding = preflight.binding_limit
    return _Draft(
        headline=(f"refused before starting: this host reaches {preflight.reachable:,} of "
                  f"{target:,} connections; {binding.key if binding else None} binds first"),
        wall=BUDGET_WALLS.get(binding.key if binding else "None", "unknown"),
        side=binding.side if binding else "host",
        evidence=[binding.detail if binding else ""],
        fix=[lim.fix for lim in preflight.limits if lim.capacity is not None and lim.capacity < target and lim.fix])


def _held(target: int, held: int, rtt: Percentiles | None, incidents: Sequence[Incident]) -> _Draft:
    draft = _Draft(headline=f"held {held:,} of {target:,} connections through the final hold{_rtt_line(rtt)}",
                   wall="none")
    if incidents:
        first = primary_incident(incidents) or incidents[0]
        draft.evidence = [f"incident at {first.elapsed_s:.0f} s ({first.open:,} open): {first.headline}"]
    return draft


def _stopped(target: int, peak_open: int, reason: str, incidents: Sequence[Incident]) -> _Draft:
    # A run cut short by its own control plane, or by the user, is explained by
    # that: the incidents before it are context, not the reason it stopped.
    control = _control_failure(reason)
    incident = None if control is not None else primary_incident(incidents)
    finding = control if control is not None else (None if incident is not None else _from_reason(reason, target))
    at = f"stopped at {peak_open:,} of {target:,} connections"
    if incident is not None:
        draft = _Draft(headline=f"{at}: {incident.headline}", wall=incident.wall, side=incident.side,
                       evidence=[f"at {incident.elapsed_s:.0f} s, {incident.open:,} open, connecting at "
                                 f"{incident.connect_rate:,.0f}/s of {incident.asked_rate:,.0f}/s asked",
                                 *incident.evidence],
                       fix=list(incident.fix))
    elif finding is not None:
        draft = _Draft(headline=f"{at}: {finding.headline}", wall=finding.wall, side=finding.side,
                       evidence=list(finding.evidence), fix=list(finding.fix))
    else:
        draft = _Draft(headline=f"{at}: {reason or 'no cause recorded'}", evidence=[reason] if reason else [])
    if reason and reason not in draft.evidence:
        draft.evidence.append(f"the run stopped because: {reason}")
    if control is not None and incidents:
        draft.evidence.append(_before_that(incidents))
    return draft


def _say_server_gone(draft: _Draft, target_events: Sequence[ObservedEvent]) -> None:
    gone = target_events_line(target_events)
    if gone:
        draft.headline += f"; {gone}"
        draft.evidence.insert(0, gone)
        if draft.wall in ("none", "unknown"):
            draft.side = "server"


def _say_side(draft: _Draft) -> None:
    side = draft.side
    if side in ("server", "client") and draft.wall not in ("none", "unknown"):
        draft.evidence.append(f"the wall is on the {side} side"
                              + (" (read on the server's host by the observer)" if side == "server"
                                 and any("read by the observer" in e for e in draft.evidence) else ""))


def _say_losses(draft: _Draft, losses: Sequence[WorkerLoss], replaced: bool) -> None:
    lost = losses_line(losses)
    if lost:
        draft.headline += f"; {lost}{' and replaced' if replaced else ''}"
        draft.evidence.insert(0, lost)


def _say_saturated(draft: _Draft, saturated_phases: Mapping[str, int] | None,
                   measuring: Sequence[Incident]) -> None:
    """The measuring-side caveat, scoped to the phases the client workers were saturated in."""
    note = ("connscale's own client workers were saturated: RTT and ramp rate reflect connscale, "
            "so this is not the server's limit")
    if saturated_phases is not None and saturated_phases and not any(is_hold(p) for p in saturated_phases):
        ramps = ", ".join(sorted(saturated_phases))
        note = (f"connscale's own client workers were saturated during {ramps} (not during a hold): the "
                "ramp's rate there is connscale's, the hold's RTT was measured with the clients keeping up")
    if draft.wall != "measuring_side":
        draft.headline += f"; but {note}"
        if measuring:
            draft.evidence += list(measuring[0].evidence)[:3]
            draft.fix += [f for f in measuring[0].fix if f not in draft.fix]


def explain(
    outcome: str,
    target: int,
    held: int = 0,
    peak_open: int = 0,
    reason: str = "",
    incidents: Sequence[Incident] = (),
    preflight: Preflight | None = None,
    rtt: Percentiles | None = None,
    saturated: bool = False,
    saturated_phases: Mapping[str, int] | None = None,
    losses: Sequence[WorkerLoss] = (),
    target_events: Sequence[ObservedEvent] = (),
    lost_agents: Sequence[AgentLost] = (),
) -> Explanation:
    """The run's explanation (see the module doc).

    `saturated_phases` (phase -> seconds the client workers were saturated, from the
    timeline) scopes the measuring-side caveat: saturated during a hold, the RTT is
    connscale's; during ramps only, the ramp's rate is, and the hold was measured cleanly.
    `losses` are the workers that died during the run (the summary's `worker_losses`): said in
    the headline, whatever the outcome, because a held target that lost a server worker on
    the way is not the same finding.
    """
    if lost_agents and outcome != "held":
        return _agents_lost(target, peak_open, incidents, lost_agents).done(saturated or bool(saturated_phases))
    measuring = [i for i in incidents if i.wall == "measuring_side"]
    saturated = saturated or bool(measuring) or bool(saturated_phases)
    if preflight is not None and reason.startswith("preflight") and preflight.binding:
        draft = _refused_by_preflight(target, preflight)
    elif outcome == "held":
        draft = _held(target, held, rtt, incidents)
    else:
        draft = _stopped(target, peak_open, reason, incidents)
    _say_server_gone(draft, target_events)
    _say_side(draft)
    _say_losses(draft, losses, replaced=outcome == "held" and held >= target)
    if saturated:
        _say_saturated(draft, saturated_phases, measuring)
    return draft.done(saturated)


def verdict_line(explanation: Explanation) -> str:
    """The one line a run prints under its HELD/FAILED line."""
    return explanation.headline + (f". Fix: {explanation.fix[0]}" if explanation.fix else "")


def explain_search_verdict(search: SearchResult) -> Explanation:
    """A search's explanation: the knee, the wall above it and its fix, the curve in words."""
    evidence = []
    for p in search.curve:
        rtt = f"p99 {p.rtt_ms.p99:.1f} ms" if p.rtt_ms.p99 is not None else "no RTT"
        verdict = "passed" if p.passed else "failed: " + "; ".join(p.reasons)
        evidence.append(f"plateau {p.index} at {p.level:,} ({p.open:,} open, {rtt}): {verdict}")
    cause = search.cause
    return Explanation(
        headline=search.headline,
        wall=(cause.wall if cause else "") or "none",
        side=cause.side if cause else "",
        evidence=tuple(evidence),
        fix=cause.fix if cause else (),
        measuring_side_saturated=search.measuring_side_saturated,
    )
