"""Synthetic timelines shaped like the controller's records, for fast report tests.

`make_records` gives the lines as plain JSON data, the way a hub of schema 1
wrote them (no `schema` key), with real encoded HdrHistograms, so the code under
test decodes and merges exactly as it does for a real run, and a test can read
them independently of the package; `make_stats` gives the same lines as the
package reads them (`Stats`, each checked by its strict parser).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from connscale.metrics.histograms import encode_histogram, new_histogram, rtt_summary_ms
from connscale.metrics.records import Stats


def _worker(index: int, pid: int, open_: int, cpu_s: float, rss: float) -> dict[str, Any]:
    return {"index": index, "pid": pid, "alive": True, "target": open_, "open": open_, "budget": 19900,
            "restarts": 0, "resources": {"cpu_user_s": cpu_s * 0.7, "cpu_system_s": cpu_s * 0.3,
                                         "rss_bytes": rss, "threads": 1.0}}


def make_records(steps: int = 3, per_step: int = 2000, hold: int = 3, final_hold: int = 5,
                 fail_at_step: int | None = None, knee_at_step: int | None = None,
                 seed: int = 7) -> list[dict[str, Any]]:
    """setup, then per step a 2 s ramp and a hold, then a final hold and a stop second."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []
    total = new_histogram()
    state = {"open": 0, "opened": 0, "pings": 0, "failures": {}, "cpu": [0.0, 0.0, 0.0], "t": 0}
    plan: list[tuple[str, int]] = [("setup", 0)]
    for k in range(1, steps + 1):
        plan += [(f"ramp:{k}", k * per_step)] * 2
        plan += [(f"hold:{k}" if k < steps else "final_hold", k * per_step)] * (hold if k < steps else final_hold)
    plan.append(("stop", steps * per_step))
    for phase, target in plan:
        state["t"] += 1
        step = int(phase.split(":")[1]) if ":" in phase else steps
        before = state["open"]
        if phase.startswith("ramp"):
            state["open"] = min(target, state["open"] + per_step // 2)
        if fail_at_step is not None and phase == f"ramp:{fail_at_step}":
            state["failures"]["connect:EADDRNOTAVAIL"] = state["failures"].get("connect:EADDRNOTAVAIL", 0) + 40
            state["open"] -= 40
        state["opened"] += max(0, state["open"] - before)
        hist = new_histogram()
        pongs = state["open"] // 2
        slow = phase.startswith("ramp")
        base = 800 if knee_at_step is None or step < knee_at_step else 30_000
        for _ in range(pongs):
            hist.record_value(int(base * rng.uniform(0.5, 2.0) * (20 if slow and rng.random() < 0.05 else 1)))
        total.add(hist)
        state["pings"] += pongs
        failures = dict(state["failures"])
        open_ = state["open"]
        for i in range(3):
            state["cpu"][i] += 0.1 + open_ / 20000
        srv = [open_ // 2, open_ - open_ // 2]
        client = {"open": open_, "opened": state["opened"], "closed": state["opened"] - open_, "pings": state["pings"],
                  "pongs": state["pings"], "skipped": 0, "failures": failures, "protocol": {},
                  "failure_total": sum(failures.values())}
        server = {"open": open_, "opened": state["opened"], "closed": state["opened"] - open_,
                  "pings": state["pings"], "pongs": state["pings"], "skipped": 0, "failures": {}, "protocol": {},
                  "failure_total": 0}
        records.append({
            "t": 1_800_000_000.0 + state["t"],
            "elapsed_s": float(state["t"]),
            "phase": phase,
            "client": client,
            "server": server,
            "clients": {"local": {"connected": True, "target": target, "open": open_, "connecting": 0,
                                  "disconnects": 0, "failures": failures,
                                  "workers": [_worker(0, 300, open_, state["cpu"][0], 30e6 + open_ * 900)]}},
            "server_workers": [_worker(i, 200 + i, srv[i], state["cpu"][1 + i], 30e6 + srv[i] * 1100)
                               for i in range(2)],
            "server_lost_workers": 0,
            "workers": {"server": 2, "client": 1},
            "ghosts": 0,
            "kernel": {"listen_overflows": 0, "listen_drops": 0, "tcp_inuse": open_ * 2},
            "rtt_ms": rtt_summary_ms(total).to_wire(),
            "rtt_window_ms": rtt_summary_ms(hist).to_wire(),
            "rtt_hist": encode_histogram(hist) if hist.get_total_count() else "",
            "events": ["agent local registered from test (pid 1, 0 workers, target 0)"] if phase == "setup" else [],
        })
    return records


def make_stats(**kw: Any) -> list[Stats]:
    """`make_records(**kw)` as the package reads them."""
    return [Stats.from_wire(r) for r in make_records(**kw)]


def write_run(run_dir: Path, records: list[dict[str, Any]], summary: dict[str, Any] | None = None,
              manifest: bool = True) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "timeline.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if manifest:
        from connscale.diagnose.manifest import write_manifest

        write_manifest(run_dir, {"scenario": {"target": 6000}, "control": {"secret": "<redacted>"}})
    return run_dir
