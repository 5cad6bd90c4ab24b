"""A `connscale run` config on free loopback ports, and running it to its summary: shared by the
run, report-browser and security end-to-end tests."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.support.procs import connscale, free_port, free_ports


def write_config(tmp: Path, **extra: str) -> Path:
    ports = free_ports(2)
    control = free_port()
    values = {
        "ports": f"{ports[0]}-{ports[1]}",
        "control": str(control),
        "target": "3000",
        "per_route_max": "14000",
        "source_ips": "127.0.0.2-127.0.0.3",
        # Generous: these tests are about the run's mechanics, on a box that may be busy.
        "timeout": "5",
        "max_failures": "0",
    }
    values.update(extra)
    path = tmp / "run.yaml"
    path.write_text(
        f"""
server: {{ports: "{values['ports']}", status_interval: 1}}
client:
  server: "127.0.0.1:{values['ports']}"
  source_ips: "{values['source_ips']}"
  interval: 2
  timeout: {values['timeout']}
  per_route_max: {values['per_route_max']}
control: {{listen: "tcp:{values['control']}:interface=127.0.0.1", console: none}}
scenario: {{target: {values['target']}, rate: 3000, steps: 2, hold: 1, final_hold: 3, time_limit: 60,
            max_failures: {values['max_failures']}}}
run: {{dir: runs}}  # relative: resolved against the directory connscale run starts in
"""
    )
    return path


def run(tmp: Path, config: Path, *extra: str, env: dict[str, str] | None = None
        ) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"), **(env or {}))
    r = subprocess.run(connscale("run", "-c", str(config), *extra), capture_output=True, text=True, timeout=150,
                       env=env, cwd=tmp)
    summaries = list((tmp / "runs").glob("*/summary.json"))
    assert len(summaries) == 1, (r.stdout, r.stderr)
    return r, json.loads(summaries[0].read_text())
