"""The explanation a run ends with: held N, or stopped at N because of a wall, with the fix.

`explain` turns what a run knows at its end (outcome, the reason it stopped,
its incidents, the preflight budget) into ``summary["explanation"]``:

    {"headline": str, "wall": str, "side": str, "evidence": [str], "fix": [str],
     "measuring_side_saturated": bool}

Pure, so the report can re-derive it from a run directory alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from connscale.diagnose.walls import Finding, listen_in_use
from connscale.metrics.phases import is_hold

#: Walls whose failures name their cause by themselves; they explain a stop
#: better than a saturation seen around the same time.
DEFINITE = frozenset({"fd_process", "fd_system", "ephemeral_ports", "routes", "server_down", "worker_lost",
                      "protocol", "memory", "conntrack", "listen_in_use", "server_cap", "server_refused"})

#: Budget limit keys -> wall ids.
BUDGET_WALLS: Mapping[str, str] = {
    "routes": "routes", "ephemeral_ports": "ephemeral_ports", "fd_process": "fd_process",
    "fd_system": "fd_system", "memory": "memory", "cpu": "cpu", "conntrack": "conntrack",
    "time_limit": "time_limit",
}


def primary_incident(incidents: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The incident that explains the run: the earliest definite one, else the earliest."""
    ordered = sorted(incidents, key=lambda i: float(i.get("elapsed_s", 0.0)))
    for incident in ordered:
        if incident.get("wall") in DEFINITE:
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


def losses_line(losses: Sequence[Mapping[str, Any]]) -> str:
    """Workers that died during the run, in words: who, how, when, and what went with them.

    One: "a server worker (pid 123) was killed by signal 9 (SIGKILL) at 5 s; 511 connections
    were lost with it". Several: each named, with the total lost.
    """
    def one(loss: Mapping[str, Any], lead: bool) -> str:
        pid = loss.get("pid")
        who = (f"a {loss.get('side', '')} worker (pid {pid})" if lead else f"pid {pid}") if pid else \
            (f"a {loss.get('side', '')} worker" if lead else "one")
        if loss.get("agent"):
            who += f" on agent {loss['agent']}"
        when = f" at {float(loss['elapsed_s']):.0f} s" if loss.get("elapsed_s") is not None else ""
        return f"{who} {loss.get('how', 'ended')}{when}"

    if not losses:
        return ""
    total = sum(int(loss.get("connections", 0)) for loss in losses)
    if len(losses) == 1:
        return f"{one(losses[0], True)}; {total:,} connections were lost with it"
    sides = sorted({str(loss.get("side", "")) for loss in losses})
    listed = ", ".join(f"{one(loss, False)} ({int(loss.get('connections', 0)):,} connections)" for loss in losses[:3])
    more = f" and {len(losses) - 3} more" if len(losses) > 3 else ""
    return (f"{len(losses)} {' and '.join(sides)} workers died: {listed}{more}; "
            f"{total:,} connections were lost with them")


def target_events_line(events: Sequence[Mapping[str, Any]]) -> str:
    """The observed server going away, in the hub's words ("redis-server (pid 41) exited at 41 s;
    restarted as pid 57"); a worker's churn under its master is not news here."""
    said = [str(e.get("text")) for e in events if e.get("kind") in ("exited", "restarted", "replaced")
            and e.get("text")]
    if not said:
        return ""
    more = f" and {len(said) - 3} more" if len(said) > 3 else ""
    return "; ".join(said[:3]) + more


def _rtt_line(rtt: Mapping[str, Any] | None) -> str:
    if not rtt or rtt.get("p99") is None:
        return ""
    return f" (RTT p50 {rtt.get('p50'):.2f} ms, p99 {rtt.get('p99'):.2f} ms)"


def explain(
    outcome: str,
    target: int,
    held: int = 0,
    peak_open: int = 0,
    reason: str = "",
    incidents: Sequence[Mapping[str, Any]] = (),
    preflight: Mapping[str, Any] | None = None,
    rtt: Mapping[str, Any] | None = None,
    saturated: bool = False,
    saturated_phases: Mapping[str, int] | None = None,
    losses: Sequence[Mapping[str, Any]] = (),
    target_events: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The run's explanation (see the module doc).

    `saturated_phases` (phase -> seconds the client workers were saturated, from the
    timeline) scopes the measuring-side caveat: saturated during a hold, the RTT is
    connscale's; during ramps only, the ramp's rate is, and the hold was measured cleanly.
    `losses` are the workers that died during the run (summary["worker_losses"]): said in
    the headline, whatever the outcome, because a held target that lost a server worker on
    the way is not the same finding.
    """
    measuring = [i for i in incidents if i.get("wall") == "measuring_side"]
    saturated = saturated or bool(measuring) or bool(saturated_phases)
    control = _control_failure(reason) if outcome != "held" else None
    out: dict[str, Any]

    if preflight is not None and reason.startswith("preflight") and preflight.get("binding"):
        b = next((lim for lim in preflight.get("limits", ()) if lim.get("binding")), None) or {}
        out = {
            "headline": f"refused before starting: this host reaches {preflight.get('reachable', 0):,} of "
                        f"{target:,} connections; {b.get('key')} binds first",
            "wall": BUDGET_WALLS.get(str(b.get("key")), "unknown"),
            "side": b.get("side", "host"),
            "evidence": [str(b.get("detail", ""))],
            "fix": [lim["fix"] for lim in preflight.get("limits", ())
                    if lim.get("capacity") is not None and lim["capacity"] < target and lim.get("fix")],
        }
    elif outcome == "held":
        out = {
            "headline": f"held {held:,} of {target:,} connections through the final hold{_rtt_line(rtt)}",
            "wall": "none", "side": "", "evidence": [], "fix": [],
        }
        if incidents:
            first = primary_incident(incidents) or incidents[0]
            out["evidence"] = [f"incident at {first.get('elapsed_s', 0):.0f} s ({first.get('open', 0):,} open): "
                               f"{first.get('headline')}"]
    else:
        # A run cut short by its own control plane, or by the user, is explained by
        # that: the incidents before it are context, not the reason it stopped.
        incident = None if control is not None else primary_incident(incidents)
        finding = control if control is not None else (None if incident is not None else _from_reason(reason, target))
        at = f"stopped at {peak_open:,} of {target:,} connections"
        if incident is not None:
            evidence = [f"at {incident.get('elapsed_s', 0):.0f} s, {incident.get('open', 0):,} open, "
                        f"connecting at {incident.get('connect_rate', 0):,.0f}/s of "
                        f"{incident.get('asked_rate', 0):,.0f}/s asked", *incident.get("evidence", ())]
            out = {"headline": f"{at}: {incident.get('headline')}", "wall": incident.get("wall", "unknown"),
                   "side": incident.get("side", ""), "evidence": evidence, "fix": list(incident.get("fix", ()))}
        elif finding is not None:
            out = {"headline": f"{at}: {finding.headline}", **{k: v for k, v in finding.to_dict().items()
                                                                 if k != "headline"}}
        else:
            out = {"headline": f"{at}: {reason or 'no cause recorded'}", "wall": "unknown", "side": "",
                   "evidence": [reason] if reason else [], "fix": []}
        if reason and reason not in out["evidence"]:
            out["evidence"].append(f"the run stopped because: {reason}")
        if control is not None and incidents:
            first = primary_incident(incidents) or incidents[0]
            out["evidence"].append(f"before that, at {first.get('elapsed_s', 0):.0f} s "
                                   f"({first.get('open', 0):,} open): {first.get('headline')}")

    gone = target_events_line(target_events)
    if gone:
        out["headline"] += f"; {gone}"
        out["evidence"].insert(0, gone)
        if out["wall"] in ("none", "unknown"):
            out["side"] = "server"
    if out["side"] in ("server", "client") and out["wall"] not in ("none", "unknown"):
        out["evidence"].append(f"the wall is on the {out['side']} side"
                               + (" (read on the server's host by the observer)" if out["side"] == "server"
                                  and any("read by the observer" in str(e) for e in out["evidence"]) else ""))

    lost = losses_line(losses)
    if lost:
        replaced = " and replaced" if outcome == "held" and held >= target else ""
        out["headline"] += f"; {lost}{replaced}"
        out["evidence"].insert(0, lost)

    if saturated:
        note = ("connscale's own client workers were saturated: RTT and ramp rate reflect connscale, "
                "so this is not the server's limit")
        if saturated_phases is not None and saturated_phases and not any(is_hold(p) for p in saturated_phases):
            ramps = ", ".join(sorted(saturated_phases))
            note = (f"connscale's own client workers were saturated during {ramps} (not during a hold): the "
                    "ramp's rate there is connscale's, the hold's RTT was measured with the clients keeping up")
        if out["wall"] != "measuring_side":
            out["headline"] += f"; but {note}"
            if measuring:
                out["evidence"] += list(measuring[0].get("evidence", ()))[:3]
                out["fix"] += [f for f in measuring[0].get("fix", ()) if f not in out["fix"]]
    out["measuring_side_saturated"] = saturated
    return out


def verdict_line(explanation: Mapping[str, Any]) -> str:
    """The one line a run prints under its HELD/FAILED line."""
    line = str(explanation.get("headline", ""))
    fixes = explanation.get("fix") or []
    return line + (f". Fix: {fixes[0]}" if fixes else "")


def explain_search_verdict(search: Mapping[str, Any]) -> dict[str, Any]:
    """A search's explanation: the knee, the wall above it and its fix, the curve in words."""
    cause = search.get("cause") or {}
    evidence = []
    for p in search.get("curve") or ():
        p99 = (p.get("rtt_ms") or {}).get("p99")
        rtt = f"p99 {p99:.1f} ms" if p99 is not None else "no RTT"
        verdict = "passed" if p.get("passed") else "failed: " + "; ".join(p.get("reasons") or ())
        evidence.append(f"plateau {p.get('index')} at {p.get('level'):,} ({p.get('open'):,} open, {rtt}): {verdict}")
    return {
        "headline": str(search.get("headline", "")),
        "wall": str(cause.get("wall") or "none"),
        "side": str(cause.get("side") or ""),
        "evidence": evidence,
        "fix": list(cause.get("fix") or ()),
        "measuring_side_saturated": bool(search.get("measuring_side_saturated")),
    }
