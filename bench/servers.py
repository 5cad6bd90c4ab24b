#!/usr/bin/env python3
"""bench/servers.py: `connscale run --url` against real servers at full size (issue 14's figures).

    flock -x /work/heavy.lock python bench/servers.py            # every case (~15 minutes)
    python bench/servers.py --only redis_held --scale 0.1        # one case, a tenth of its size

Cases (each server started by tests/support/servers.py on a loopback port with its own config,
stopped by pid):
  redis_held        redis-server --maxclients 16000 (one process: its fd cap bounds it), 15,000 held
  redis_default     Redis's default maxclients (10,000): the run stops near it and names maxclients
  nginx_held        nginx, 2 workers, worker_connections raised to 32,768: 20,000 held
  nginx_768         nginx with Debian's worker_connections 768: the run stops and names it
  mosquitto_held    mosquitto, no max_connections: 15,000 held
  websocket_held    autobahn's WebSocket echo server: 15,000 held

Prints one line per case (held or stopped, failures, the final hold's RTT, the explanation's
headline and first fix) and, last, one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from connscale.diagnose.records import read_summary  # noqa: E402
from tests.support import servers  # noqa: E402  (one owner for starting the servers)
from tests.support.procs import free_port  # noqa: E402

CASES = {
    # name: (server, server options, URL scheme and path, target)
    "redis_held": ("redis", {"maxclients": 16000}, "redis://127.0.0.1:{port}", 15_000),
    "redis_default": ("redis", {}, "redis://127.0.0.1:{port}", 12_000),
    # Two workers (one per core): one nginx process accepting a 2,500/s ramp beside the clients
    # left a few connections unanswered for 10 s (handshake_timeout) at ~20,000.
    "nginx_held": ("nginx", {"worker_connections": 32768, "workers": 2}, "http://127.0.0.1:{port}/", 20_000),
    "nginx_768": ("nginx", {"worker_connections": 768}, "http://127.0.0.1:{port}/", 2_000),
    "mosquitto_held": ("mosquitto", {}, "mqtt://127.0.0.1:{port}", 15_000),
    "websocket_held": ("ws_echo", {}, "ws://127.0.0.1:{port}/socket", 15_000),
}


def run_case(name: str, scale: float, interval: float) -> dict[str, object]:
    server, options, url, target = CASES[name]
    if not name.endswith(("_default", "_768")):
        target = max(100, int(target * scale))
    with tempfile.TemporaryDirectory(prefix=f"connscale-{name}-") as tmp:
        work = Path(tmp)
        control = free_port()
        cfg = work / "run.yaml"
        cfg.write_text(f"""
client: {{interval: {interval}, timeout: 5, handshake_timeout: 10, source_ips: "127.0.0.2-127.0.0.5"}}
control: {{listen: "tcp:{control}:interface=127.0.0.1", console: none}}
scenario: {{target: {target}, rate: 2500, steps: 5, hold: 2, final_hold: 15, time_limit: 240, max_failures: 0}}
run: {{dir: runs}}
""")
        started = time.monotonic()
        with getattr(servers, server)(work, **options) as running:
            # The server's own side too: the observer reads its process (fds, RSS per connection).
            r = subprocess.run([sys.executable, "-m", "connscale", "run", "-c", str(cfg), "--url",
                                url.format(port=running.port), "--observe", str(running.pid)],
                               capture_output=True, text=True, timeout=600, cwd=work)
        run_dir = next((work / "runs").glob("*/summary.json"), None)
        s, why = read_summary(run_dir.parent) if run_dir is not None else (None, "")
        if s is None:
            return {"case": name, "error": (why + "\n" + r.stdout + r.stderr)[-500:]}
        explanation = s.explanation
        final = s.rtt_final_hold_ms
        return {
            "case": name, "target": target, "verdict": s.verdict, "held": s.held, "peak_open": s.peak_open,
            "failures": s.failure_total, "failure_causes": dict(s.failures),
            "rtt_final_hold_p50_ms": final.p50, "rtt_final_hold_p99_ms": final.p99,
            "wall": explanation.wall if explanation else None,
            "headline": explanation.headline if explanation else None,
            "fix": explanation.fix[0] if explanation and explanation.fix else None,
            "seconds": round(time.monotonic() - started, 1),
            # The server's RSS per held connection, as the observer read its process.
            "server_rss_per_conn": row.pinging if s.memory and (row := s.memory.row("server_rss")) else None,
        }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(CASES), help="run only this case (repeatable)")
    ap.add_argument("--scale", type=float, default=1.0, help="share of each held case's count (default 1)")
    ap.add_argument("--interval", type=float, default=5.0, help="client.interval (default 5 s)")
    args = ap.parse_args()
    missing = servers.missing("redis-server", "nginx", "mosquitto")
    if missing:
        print(f"bench/servers.py: {missing}", file=sys.stderr)
        return 2
    results = []
    for name in args.only or list(CASES):
        result = run_case(name, args.scale, args.interval)
        results.append(result)
        if "error" in result:
            print(f"{name}: no summary: {result['error']}", flush=True)
            continue
        print(f"{name}: {result['verdict']} held={result['held']:,} peak={result['peak_open']:,} "
              f"of {result['target']:,}, failures={result['failures']:,} "
              f"final-hold RTT p50/p99 {result['rtt_final_hold_p50_ms']}/{result['rtt_final_hold_p99_ms']} ms "
              f"server RSS per connection {result['server_rss_per_conn']} B ({result['seconds']} s)\n"
              f"    why: {result['headline']}\n    fix: {result['fix']}", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
