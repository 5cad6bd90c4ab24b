"""The multi-host harness on network namespaces: a hub and its agents in their own hosts, their
configs, `connscale ctl` against the hub, and waiting on a count. Shared by the multi-host, observer
and walls end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import random
import string
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.support.netns import IP_BIN, Host
from tests.support.procs import Proc, connscale
from tests.support.sshd import Sshd


# Inside a fresh namespace every port is free; these stay below the hosts'
# ephemeral range (10000-65000, see netns.DEFAULT_SYSCTLS) so no outgoing
# connection can ever have taken them.
SERVER_PORTS = (8989, 8990)
CONTROL_PORT = 8790

CTL_TIMEOUT = 60.0     # one `connscale ctl` call, start-up included
READY_TIMEOUT = 60.0   # a process reaching a log line
COUNT_TIMEOUT = 90.0   # connections reaching a count (2 shared cores)


def random_secret(n: int = 24) -> str:
    return "".join(random.SystemRandom().choice(string.ascii_letters + string.digits) for _ in range(n))


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def hub_config(hub: Host, secret: str, **extra: Any) -> dict[str, Any]:
    """The shared config: the hub reads server/control, agents client/control;
    the hub's controller also builds every agent's routes from client.server."""
    data: dict[str, Any] = {
        "server": {"interface": hub.ip, "ports": list(SERVER_PORTS), "status_interval": 2},
        "client": {
            "server": f"{hub.ip}:{SERVER_PORTS[0]}-{SERVER_PORTS[-1]}",
            "interval": 5,
            "rate": 2500,
            "status_interval": 2,
        },
        "control": {
            "listen": f"tcp:{CONTROL_PORT}:interface={hub.ip}",
            "secret": secret,
            "console": "none",
        },
        # Sizes the hub's server workers: two fd budgets hold this easily.
        "scenario": {"target": 20000},
    }
    data.update(extra)
    return data


def master(hub: Host) -> str:
    return f"{hub.ip}:{CONTROL_PORT}"


def tail(proc: Proc | None, n: int = 4000) -> str:
    if proc is None:
        return ""
    try:
        return f"\n--- {proc.log_path.name} (tail) ---\n{proc.text()[-n:]}"
    except OSError:
        return ""


def start_hub(stack: contextlib.ExitStack, hub: Host, cfg: Path, tmp: Path,
              env: dict[str, str] | None = None) -> Proc:
    proc = Proc(connscale("server", "--config", str(cfg), "--record-dir", str(tmp / "hub-run")),
                tmp / "hub.log", prefix=hub.argv([]), env=env)
    stack.callback(proc.stop)
    proc.wait_line("server workers listening", timeout=READY_TIMEOUT)
    return proc


def start_agent(stack: contextlib.ExitStack, host: Host, hub: Host, name: str, cfg: Path, tmp: Path,
                source_ips: list[str]) -> Proc:
    argv = connscale("agent", "--master", master(hub), "--name", name, "--config", str(cfg))
    for ip in source_ips:
        argv += ["--source-ip", ip]
    proc = Proc(argv, tmp / f"agent-{name}.log", prefix=host.argv([]))
    stack.callback(proc.stop)
    return proc


def ctl(hub: Host, cfg: Path, *args: str, timeout: float = CTL_TIMEOUT) -> subprocess.CompletedProcess:
    """`connscale ctl` run inside the hub's host, the only place its address is reachable."""
    return hub.run(connscale("ctl", "--master", master(hub), "--config", str(cfg), *args),
                   capture_output=True, text=True, timeout=timeout)


def ctl_ok(hub: Host, cfg: Path, *args: str, logs: tuple[Proc, ...] = ()) -> str:
    r = ctl(hub, cfg, *args)
    assert r.returncode == 0, (
        f"ctl {' '.join(args)} -> {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
        + "".join(tail(p) for p in logs)
    )
    return r.stdout


def wait_until(what: str, probe: Callable[[], Any], want: Any, timeout: float = COUNT_TIMEOUT,
               logs: tuple[Proc, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last == want:
            return
        for p in logs:
            if not p.running():
                raise AssertionError(f"{what}: {p.log_path.name} exited with {p.popen.returncode} "
                                     f"(last value {last!r}, want {want!r})" + tail(p))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: last {last!r}, want {want!r}"
                                 + "".join(tail(p) for p in logs))
        time.sleep(0.5)


def remote_env() -> dict[str, str]:
    """sshd passes no environment: the remote agent must load the code under test
    (this checkout, via PYTHONPATH), not whatever is installed."""
    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}


def ssh_options_without_port(sshd: Sshd) -> list[str]:
    """The port is the clients: entry's own key."""
    options = sshd.ssh_options()
    i = options.index("-p")
    del options[i:i + 2]
    return options


def ns_processes(host: Host) -> dict[int, str]:
    """pid -> command line of every process inside the host's namespace."""
    r = subprocess.run([IP_BIN, "netns", "pids", host.ns], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=15)
    out = {}
    for pid in (int(p) for p in r.stdout.split() if p.isdigit()):
        try:
            out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return out


def connscale_processes(host: Host) -> dict[int, str]:
    return {pid: cmd for pid, cmd in ns_processes(host).items() if "connscale" in cmd}
