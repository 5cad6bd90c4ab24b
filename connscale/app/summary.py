"""What a finished run says: `summary.json` and its one verdict line."""

from __future__ import annotations

from typing import Any

from connscale.app.scenario import Progress
from connscale.config.settings import ScenarioSettings
from connscale.metrics.histograms import new_histogram, rtt_summary_ms


def build(progress: Progress, settings: ScenarioSettings, ok: bool, reason: str,
          duration_s: float, run_dir: str) -> dict[str, Any]:
    p = progress
    stats = p.stats or {}
    rtt = stats.get("rtt_ms") or rtt_summary_ms(new_histogram())
    return {
        "verdict": "held" if ok else "failed",
        "reason": reason,
        "target": settings.target,
        "peak_open": p.peak_open,
        "held": p.held,
        "open_at_end": p.open,
        "server_open_at_end": p.server_open,
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
        "events": p.events,
        "run_dir": run_dir,
    }


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
