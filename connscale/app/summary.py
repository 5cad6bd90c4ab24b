"""What a finished run says: `summary.json`, its one verdict line and its explanation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from connscale.app.scenario import Progress
from connscale.config.settings import ScenarioSettings
from connscale.diagnose.incidents import saturated_phases
from connscale.diagnose.verdict import explain, explain_search_verdict
from connscale.metrics.histograms import new_histogram, rtt_summary_ms


def build(progress: Progress, settings: ScenarioSettings, ok: bool, reason: str,
          duration_s: float, run_dir: str, preflight: dict[str, Any] | None = None,
          search: dict[str, Any] | None = None) -> dict[str, Any]:
    p = progress
    stats = p.stats or {}
    rtt = stats.get("rtt_ms") or rtt_summary_ms(new_histogram())
    result: dict[str, Any] = {
        # A search ends with a knee (see "search") rather than a held target.
        "verdict": ("knee" if ok else "failed") if search is not None else ("held" if ok else "failed"),
        "reason": reason,
        "target": settings.target,
        "peak_open": p.peak_open,
        "held": p.held,
        "open_at_end": p.open,
        # None without a server of our own (client.url): nothing counted it.
        "server_open_at_end": p.server_open if stats.get("own_server", True) else None,
        "ghosts": stats.get("ghosts", 0),
        "failures": p.failures,
        "counted_failures": p.counted_failures,
        "pings": stats.get("client", {}).get("pings", 0),
        "pongs": stats.get("client", {}).get("pongs", 0),
        "rtt_ms": {k: rtt.get(k) for k in ("p50", "p90", "p99", "max")},
        "duration_s": round(duration_s, 3),
        "workers": stats.get("workers", {"server": 0, "client": 0}),
        "kernel": stats.get("kernel", {}),
        "phases": p.phases,
        "steps": [s.as_dict() for s in p.step_log],
        # Setup time before the ramp: the agent starting the client workers the target needs.
        "client_workers_start_s": p.client_workers_start_s,
        "events": p.events,
        "run_dir": run_dir,
        # Walls met, each as the hub snapshotted it (see connscale.diagnose.incidents).
        "incidents": list(stats.get("incidents") or []),
        # Workers that died during the run: who, how, when, and the connections lost with them.
        "worker_losses": list(stats.get("worker_losses") or []),
        # What `connscale check` said of this host before the run.
        "preflight": preflight,
        # The observed server exiting, restarting, replaced (connscale observe), timed by the hub.
        "target_events": list(stats.get("target_events") or []),
    }
    if search is not None:
        result["search"] = search
    return result


def explanation(result: dict[str, Any], records: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Why it held or where it stopped, in words, with the fix (connscale.diagnose.verdict);
    called once the summary has its per-phase RTT. `records`: the timeline, which says in
    which phases connscale's own clients were saturated."""
    if result.get("search") is not None:
        return explain_search_verdict(result["search"])
    final = result.get("rtt_final_hold_ms") or {}
    return explain(
        result["verdict"], int(result["target"]), held=int(result["held"]), peak_open=int(result["peak_open"]),
        reason=str(result.get("reason", "")), incidents=result.get("incidents") or [],
        preflight=result.get("preflight"), rtt=final if final.get("p99") is not None else result.get("rtt_ms"),
        saturated_phases=saturated_phases(records) if records is not None else None,
        losses=result.get("worker_losses") or [],
        target_events=result.get("target_events") or [],
    )


def verdict_line(summary: dict[str, Any]) -> str:
    rtt = summary["rtt_ms"]
    workers = summary["workers"]
    final = summary.get("rtt_final_hold_ms") or {}
    if final.get("p50") is not None:
        # The hold's latency, with the whole run's p99 beside it: a ramp's
        # connect bursts must not pass for the latency of holding.
        latency = f"rtt_ms final_hold p50={final['p50']} p99={final['p99']} whole_run p99={rtt['p99']}"
    else:
        latency = f"rtt_ms p50={rtt['p50']} p99={rtt['p99']}"
    return (
        f"{summary['verdict'].upper()}: held={summary['held']} target={summary['target']} "
        f"peak_open={summary['peak_open']} failures={sum(summary['failures'].values())} "
        f"{latency} "
        f"workers server={workers.get('server')} client={workers.get('client')} "
        f"duration={summary['duration_s']:.0f}s"
    )
