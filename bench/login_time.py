#!/usr/bin/env python3
"""What one control login costs: a real hub (`connscale server`, one server worker) on
loopback and N logins one after the other (operator, then agent names), each a fresh
connection through `control.dial.login`, the way ctl, run and agents log in.

Prints the login's wall time per attempt (median, p90) as the peer sees it, and the hub's
CPU per login (utime+stime of the hub process over the attempts, /proc/PID/stat). The
peer's one-time key derivation (scrypt, once per process) is done before timing starts.
Bounded: N attempts (default 50 each), 120 s. Loopback only. Works against any
connscale whose `dial.login(reactor, host, port, username, secret)` it finds on
PYTHONPATH, so the same script measures the branch and main:

    python bench/login_time.py
    PYTHONPATH=../main python bench/login_time.py
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process itself (its worker's CPU is no login's)."""
    f = c.stat_fields(pid) or ["0"] * 13
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    work = tempfile.mkdtemp(prefix="connscale-login-")
    port, serve = c.free_port(), c.free_port()
    config = os.path.join(work, "hub.yaml")
    with open(config, "w") as f:
        json.dump({"server": {"interface": "127.0.0.1", "ports": [serve], "workers": 1, "status_interval": 60},
                   "control": {"listen": f"tcp:{port}:interface=127.0.0.1", "console": "none"}}, f)
    secret = secrets.token_urlsafe(32)
    env = dict(os.environ, CONNSCALE_SECRET=secret, XDG_CONFIG_HOME=os.path.join(work, "xdg"))
    hub = subprocess.Popen([sys.executable, "-m", "connscale", "server", "--config", config,
                            "--record-dir", os.path.join(work, "rec")], env=env, stdout=open(os.path.join(work, "hub.log"), "wb"),
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("the hub did not listen")
                time.sleep(0.2)
        time.sleep(1)
        from twisted.internet import defer, task

        from connscale.control import dial
        from connscale.control.auth import Credentials

        credentials = Credentials.from_secret(secret.encode())
        out: dict[str, object] = {}

        @defer.inlineCallbacks
        def run(reactor):  # type: ignore[no-untyped-def]
            from twisted.spread import pb

            # Warm up: the peer's key derivation happens once per process.
            factory, _ = yield dial.login(reactor, "127.0.0.1", port, "operator", credentials)
            factory.disconnect()
            for role in ("operator", "agent"):
                times = []
                before = cpu_seconds(hub.pid)
                for i in range(n):
                    name = "operator" if role == "operator" else f"agent:bench{i}"
                    started = time.perf_counter()
                    factory, _ = yield dial.login(reactor, "127.0.0.1", port, name, credentials,
                                                  mind=pb.Referenceable())
                    times.append(time.perf_counter() - started)
                    factory.disconnect()
                    yield task.deferLater(reactor, 0.01, lambda: None)
                cpu = cpu_seconds(hub.pid) - before
                times.sort()
                out[role] = {"logins": n, "median_ms": round(statistics.median(times) * 1000, 2),
                             "p90_ms": round(times[int(n * 0.9)] * 1000, 2),
                             "hub_cpu_ms_per_login": round(cpu / n * 1000, 2)}

        task.react(run)
    except SystemExit:
        pass
    finally:
        c.stop_process(hub, "hub", ((signal.SIGTERM, 15),))
    print(json.dumps(out))
    print(f"hub log: {os.path.join(work, 'hub.log')}", file=sys.stderr)


if __name__ == "__main__":
    main()
