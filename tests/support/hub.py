"""A hub (`connscale server`, two server workers) and its agents as real processes on loopback,
each in its own config and XDG home under the test's tmp_path; the `hub` fixture
(tests/conftest.py) makes them and stops what they started."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
from pathlib import Path

from tests.support.procs import Proc, connscale, free_port, free_ports


class Hub:
    def __init__(self, tmp: Path, console: str = "none", keys: Path | None = None) -> None:
        self.tmp = tmp
        self.ports = free_ports(2)
        self.control = free_port()
        self.console_port = free_port()
        self.env = {"XDG_CONFIG_HOME": str(tmp / "xdg"), "HOME": str(tmp)}
        self.config = tmp / "connscale.yaml"
        self.config.write_text(
            f"""
server: {{ports: {self.ports[0]}-{self.ports[1]}, status_interval: 1, workers: 2}}
client:
  server: 127.0.0.1:{self.ports[0]}-{self.ports[1]}
  interval: 2
  timeout: 2
  rate: 2000
  status_interval: 1
  source_ips: 127.0.0.2-127.0.0.3
control:
  listen: tcp:{self.control}:interface=127.0.0.1
  console: {console}
  console_listen: tcp:{self.console_port}:interface=127.0.0.1
  console_keys: {keys or 'null'}
"""
        )
        self.runs = 0
        self._agents = itertools.count(1)
        self.proc: Proc | None = None

    def start(self) -> Proc:
        self.runs += 1
        self.proc = Proc(
            connscale("server", "--config", str(self.config), "--record-dir", str(self.tmp / "rec")),
            self.tmp / f"hub-{self.runs}.log", env=self.env,
        )
        self.proc.wait_line("server workers listening", 30)
        return self.proc

    def agent(self, name: str, *extra: str) -> Proc:
        return Proc(
            connscale("agent", "--config", str(self.config), "--master", f"127.0.0.1:{self.control}",
                      "--name", name, *extra),
            self.tmp / f"agent-{name}-{next(self._agents)}.log", env=self.env,
        )

    def load(self, agent: Proc, name: str, connections: int) -> subprocess.CompletedProcess[str]:
        """Once `agent` (started as `name`) has registered, `ctl start` gives it `connections`;
        returns when the hub counts them open on it, with what `ctl start` answered."""
        agent.wait_line("registered with controller", 30)
        started = self.ctl("start", str(connections), "--client", name)
        assert started.returncode == 0, started.stdout + started.stderr
        self.wait_count(connections, name)
        return started

    def ctl(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, **self.env)
        return subprocess.run(connscale("ctl", "--config", str(self.config), *args),
                              capture_output=True, text=True, timeout=timeout, env=env)

    def count(self, client: str | None = None) -> int:
        r = self.ctl("count", *(["--client", client] if client else []))
        assert r.returncode == 0, r.stderr
        return int(r.stdout.strip())

    def wait_count(self, expected: int, client: str | None = None, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.count(client)
            if last == expected:
                return
            time.sleep(1)
        raise AssertionError(f"count({client}) stayed at {last}, wanted {expected}")

    def stats(self) -> dict:
        r = self.ctl("stats", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
