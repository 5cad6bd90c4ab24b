"""End to end across hosts: a hub in one network namespace, agents in others.

Every process is real (`connscale server|agent|ctl`, sshd, ssh) and runs
inside a host of a `TestNetwork` (198.18.0.x on a bridge, no default route),
so the control plane is exercised over a real non-loopback network exactly
as between machines: the hub listens on h1's address only, agents dial it
from h2/h3 and bind their own source addresses, and `connscale ctl` runs
where the hub is reachable (inside h1).

All waits are bounded and assert on counts, never on timings. Every process
is stopped by its pid; the network's own cleanup then kills whatever is left
inside its namespaces.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.support.netns import IP_BIN, Host, TestNetwork, netns_available
from tests.support.procs import Proc
from tests.support.sshd import SSH_BIN, SSH_KEYGEN_BIN, Sshd, sshd_unavailable_reason
from tests.support.console import Reader, clean
from tests.support.multihost import (
    COUNT_TIMEOUT,
    CTL_TIMEOUT,
    READY_TIMEOUT,
    connscale_processes,
    ctl,
    ctl_ok,
    hub_config,
    master,
    random_secret,
    remote_env,
    ssh_options_without_port,
    start_agent,
    start_hub,
    tail,
    wait_until,
    write_config,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not netns_available(), reason="needs root and working `ip netns` (veth, bridge)"),
    pytest.mark.timeout(180),
]

CONSOLE_PORT = 8791


def counter(hub: Host, cfg: Path, client: str | None = None, logs: tuple[Proc, ...] = ()) -> Callable[[], int]:
    args = ("count",) + (("--client", client) if client else ())
    return lambda: int(ctl_ok(hub, cfg, *args, logs=logs).strip())


def clients_table(text: str) -> dict[str, dict[str, str]]:
    lines = text.strip().splitlines()
    header = lines[0].split()
    return {row.split()[0]: dict(zip(header, row.split())) for row in lines[1:]}


# ------------------------------------------------------------------------------- tests

def test_two_agents_in_their_own_hosts(tmp_path: Path) -> None:
    with TestNetwork(3) as net, contextlib.ExitStack() as stack:
        h1, h2, h3 = net.hosts
        extra = h2.add_address("198.18.0.12")
        secret = random_secret()
        cfg = write_config(tmp_path / "connscale.yaml", hub_config(h1, secret))
        hub = start_hub(stack, h1, cfg, tmp_path)
        a2 = start_agent(stack, h2, h1, "a2", cfg, tmp_path, [h2.ip, extra])
        a3 = start_agent(stack, h3, h1, "a3", cfg, tmp_path, [h3.ip])
        logs = (hub, a2, a3)
        for agent in (a2, a3):
            agent.wait_line("registered with controller", timeout=READY_TIMEOUT)

        table = clients_table(ctl_ok(h1, cfg, "clients", logs=logs))
        assert set(table) == {"a2", "a3"}
        assert all(row["connected"] == "True" for row in table.values()), table

        assert ctl_ok(h1, cfg, "start", "10000", "--client", "a2", logs=logs).strip() == "target 10000"
        assert ctl_ok(h1, cfg, "start", "10000", "--client", "a3", logs=logs).strip() == "target 10000"
        wait_until("server count 20000", counter(h1, cfg, logs=logs), 20000, logs=logs)
        wait_until("a2 count 10000", counter(h1, cfg, "a2", logs), 10000, logs=logs)
        wait_until("a3 count 10000", counter(h1, cfg, "a3", logs), 10000, logs=logs)

        assert ctl_ok(h1, cfg, "stop", "5000", "--client", "a2", logs=logs).strip() == "target 5000"
        wait_until("a2 count 5000", counter(h1, cfg, "a2", logs), 5000, logs=logs)
        wait_until("server count 15000", counter(h1, cfg, logs=logs), 15000, logs=logs)
        assert counter(h1, cfg, "a3", logs)() == 10000

        stats = json.loads(ctl_ok(h1, cfg, "stats", "--json", logs=logs))
        assert stats["server"]["failure_total"] == 0, stats["server"]
        assert stats["client"]["failure_total"] == 0, stats["client"]
        assert stats["server"]["open"] == 15000
        assert {name: c["failures"] for name, c in stats["clients"].items()} == {"a2": {}, "a3": {}}
        assert stats["clients"]["a2"]["target"] == 5000 and stats["clients"]["a3"]["target"] == 10000

        # The agents really used the source addresses they were given: the
        # server sees connections from every one of them, and only those.
        r = h1.run(["ss", "-Htn", "state", "established", "( sport = :8989 or sport = :8990 )"],
                   capture_output=True, text=True, timeout=30)
        peers = {line.split()[-1].rsplit(":", 1)[0] for line in r.stdout.splitlines() if line.strip()}
        assert peers == {h2.ip, extra, h3.ip}, peers


def test_wrong_secret_refused(tmp_path: Path) -> None:
    with TestNetwork(2) as net, contextlib.ExitStack() as stack:
        h1, h2 = net.hosts
        cfg = write_config(tmp_path / "hub.yaml", hub_config(h1, random_secret()))
        wrong = write_config(tmp_path / "wrong.yaml", hub_config(h1, random_secret()))
        hub = start_hub(stack, h1, cfg, tmp_path)

        agent = start_agent(stack, h2, h1, "intruder", wrong, tmp_path, [h2.ip])
        try:
            # By itself: a refused login is final, not something to retry.
            code = agent.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("agent with a wrong secret kept running" + tail(agent) + tail(hub)) from None
        assert code != 0, tail(agent)
        # The hub could not prove our secret: the agent hangs up before proving anything itself.
        assert "wrong control secret: the controller 198.18.0.1:8790 did not prove it knows ours" in agent.text(), \
            tail(agent)

        r = ctl(h1, wrong, "clients")
        assert r.returncode == 4, (r.returncode, r.stdout, r.stderr)
        assert r.stdout == ""
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "wrong control secret" in r.stderr

        # The hub is unharmed and registered nobody.
        assert ctl_ok(h1, cfg, "clients", logs=(hub,)).strip() == "(none)"
        assert hub.running()


@pytest.mark.skipif(sshd_unavailable_reason() is not None, reason=str(sshd_unavailable_reason()))
def test_remote_launch_over_ssh(tmp_path: Path) -> None:
    with TestNetwork(2) as net, contextlib.ExitStack() as stack:
        h1, h2 = net.hosts
        sshd = stack.enter_context(Sshd(netns=h2))
        options = ssh_options_without_port(sshd)
        common = {
            "host": h2.ip, "port": sshd.port, "user": "root", "ssh_options": options,
            "master": master(h1), "source_ips": [h2.ip], "env": remote_env(),
        }
        cfg = write_config(tmp_path / "connscale.yaml", hub_config(
            h1, random_secret(),
            clients={
                "c2": dict(common, python=sys.executable),
                "nopython": dict(common, python="/nonexistent/python3"),
            },
        ))
        hub = start_hub(stack, h1, cfg, tmp_path)
        logs = (hub,)

        assert ctl_ok(h1, cfg, "client-start", "c2", logs=logs).strip() == "started c2"
        table = clients_table(ctl_ok(h1, cfg, "clients", logs=logs))
        assert table["c2"]["connected"] == "True", table
        assert connscale_processes(h2), "no agent process inside h2"
        # The remote agent's output comes back through ssh, named after its client.
        hub.wait_line("[c2] ", timeout=READY_TIMEOUT)

        assert ctl_ok(h1, cfg, "start", "3000", "--client", "c2", logs=logs).strip() == "target 3000"
        wait_until("server count 3000", counter(h1, cfg, logs=logs), 3000, logs=logs)
        wait_until("c2 count 3000", counter(h1, cfg, "c2", logs), 3000, logs=logs)
        assert ctl_ok(h1, cfg, "stop", "1000", "--client", "c2", logs=logs).strip() == "target 2000"
        wait_until("c2 count 2000", counter(h1, cfg, "c2", logs), 2000, logs=logs)
        wait_until("server count 2000", counter(h1, cfg, logs=logs), 2000, logs=logs)

        assert ctl_ok(h1, cfg, "client-stop", "c2", logs=logs).strip() == "stopped"
        # The agent is gone by the time client-stop answers: its ssh session
        # (the lifeline) ended, and the session only ends with the command.
        left = {pid: cmd for pid, cmd in connscale_processes(h2).items() if " agent " in f"{cmd} "}
        assert not left, f"agent still running in h2 after client-stop: {left}" + tail(hub)
        wait_until("no connscale process left in h2", lambda: connscale_processes(h2), {}, timeout=20,
                   logs=logs)
        wait_until("server count 0", counter(h1, cfg, logs=logs), 0, logs=logs)
        table = clients_table(ctl_ok(h1, cfg, "clients", logs=logs))
        assert table["c2"]["connected"] == "False", table

        r = ctl(h1, cfg, "client-start", "nopython")
        assert r.returncode == 1, (r.returncode, r.stdout, r.stderr, tail(hub))
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "not found" in r.stderr and "/nonexistent/python3" in r.stderr, r.stderr
        assert hub.running()

        # Last, so every check above has run: the remote agent's own output
        # (relayed by the hub) shows a clean exit on client-stop.
        remote = "\n".join(line for line in hub.lines() if "[c2] " in line)
        if "Traceback" in remote:
            raise AssertionError("traceback in the remote agent's output:\n" + remote[-4000:])


@pytest.mark.skipif(sshd_unavailable_reason() is not None, reason=str(sshd_unavailable_reason()))
def test_console_launches_remote_client_over_ssh_and_scales_it(tmp_path: Path) -> None:
    """The operator's path end to end: a real `ssh -tt` into the hub's console
    (from inside h1, to h1's address), `client_start` launching the agent in h2
    over a real sshd, scaling it from the console, `client_stop`, Ctrl-D."""
    key = tmp_path / "id_admin"
    subprocess.run([SSH_KEYGEN_BIN, "-q", "-t", "ed25519", "-N", "", "-C", "admin", "-f", str(key)],
                   check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
    keys = tmp_path / "authorized_keys"
    keys.write_text(Path(f"{key}.pub").read_text())

    with TestNetwork(2) as net, contextlib.ExitStack() as stack:
        h1, h2 = net.hosts
        sshd = stack.enter_context(Sshd(netns=h2))
        options = ssh_options_without_port(sshd)
        data = hub_config(h1, random_secret(), clients={"c2": {
            "host": h2.ip, "port": sshd.port, "user": "root", "ssh_options": options,
            "master": master(h1), "source_ips": [h2.ip], "python": sys.executable, "env": remote_env(),
        }})
        data["control"].update(console="ssh", console_listen=f"tcp:{CONSOLE_PORT}:interface={h1.ip}",
                               console_keys=str(keys), console_user="admin")
        cfg = write_config(tmp_path / "connscale.yaml", data)
        # The console's host key goes to the hub's state dir: keep it in tmp_path.
        hub = start_hub(stack, h1, cfg, tmp_path, env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
        logs = (hub,)
        hub.wait_line(f"console (ssh) listening on {h1.ip}:{CONSOLE_PORT}", timeout=READY_TIMEOUT)

        session = h1.popen([SSH_BIN, "-F", "/dev/null", "-tt", "-i", str(key), "-p", str(CONSOLE_PORT),
                            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
                            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", f"admin@{h1.ip}"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def end_session() -> None:
            if session.poll() is None:
                session.kill()
                session.wait(timeout=5)

        stack.callback(end_session)   # runs before the hub and sshd stop (LIFO)
        out = Reader(session.stdout)

        def console(line: str, timeout: float = CTL_TIMEOUT) -> str:
            """Type one line; the repr of the Deferred's result it prints once it fires."""
            with out.lock:
                start = len(out.data)   # raw bytes: only what this line brings back
            session.stdin.write(line.encode() + b"\r")
            session.stdin.flush()
            deadline = time.monotonic() + timeout
            while True:
                with out.lock:
                    new = clean(out.data[start:])
                m = re.search(r"Deferred #\d+ (called back|failed): (.*)\n", new)
                if m:
                    assert m.group(1) == "called back", f"{line} -> {m.group(0)}" + tail(hub)
                    return m.group(2).strip()
                if time.monotonic() > deadline or session.poll() is not None:
                    raise AssertionError(f"no result for {line!r} within {timeout}s (ssh exit "
                                         f"{session.poll()}); console output:\n{out.text()}" + tail(hub))
                time.sleep(0.05)

        out.wait_for(r">>> ", 20)
        assert console("client_start('c2')") == "c2"
        assert connscale_processes(h2), "no agent process inside h2"
        assert console("connections_start(2000, 'c2')") == "2000"
        wait_until("console count_connections() 2000", lambda: console("count_connections()"), "2000",
                   logs=logs)
        wait_until("console count_connections('c2') 2000", lambda: console("count_connections('c2')"),
                   "2000", logs=logs)
        assert console("connections_stop(500, 'c2')") == "1500"
        wait_until("console count_connections('c2') 1500", lambda: console("count_connections('c2')"),
                   "1500", logs=logs)
        wait_until("console count_connections() 1500", lambda: console("count_connections()"), "1500",
                   logs=logs)
        assert console("client_stop('c2')") == "None"

        # As with ctl client-stop: the agent is gone by the time it answers.
        left = {pid: cmd for pid, cmd in connscale_processes(h2).items() if " agent " in f"{cmd} "}
        assert not left, f"agent still running in h2 after client_stop: {left}" + tail(hub)
        wait_until("no connscale process left in h2", lambda: connscale_processes(h2), {}, timeout=20,
                   logs=logs)
        wait_until("console count_connections() 0", lambda: console("count_connections()"), "0", logs=logs)

        session.stdin.write(b"\x04")
        session.stdin.flush()
        try:
            code = session.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("ssh console session did not end on Ctrl-D:\n" + out.text()) from None
        assert code == 0, f"ssh exited {code}:\n{out.text()}"
        assert hub.running(), tail(hub)

        remote = "\n".join(line for line in hub.lines() if "[c2] " in line)
        assert remote, "no output of the remote agent relayed by the hub" + tail(hub)
        if "Traceback" in remote:
            raise AssertionError("traceback in the remote agent's output:\n" + remote[-4000:])


def test_agent_host_cut_off_for_10s_then_back(tmp_path: Path) -> None:
    """h2's cable is pulled (its bridge port down) for 10 s: the hub marks the agent lost
    within seconds, the agent comes back with its session and name, and both sides'
    counts meet at the target again."""
    with TestNetwork(2) as net, contextlib.ExitStack() as stack:
        h1, h2 = net.hosts
        cfg = write_config(tmp_path / "connscale.yaml", hub_config(h1, random_secret()))
        hub = start_hub(stack, h1, cfg, tmp_path)
        agent = start_agent(stack, h2, h1, "a2", cfg, tmp_path, [h2.ip])
        logs = (hub, agent)
        agent.wait_line("registered with controller", timeout=READY_TIMEOUT)
        assert ctl_ok(h1, cfg, "start", "2000", "--client", "a2", logs=logs).strip() == "target 2000"
        wait_until("server count 2000", counter(h1, cfg, logs=logs), 2000, logs=logs)

        def connected() -> str:
            return clients_table(ctl_ok(h1, cfg, "clients", logs=logs))["a2"]["connected"]

        port = ["-n", net.bridge_ns, "link", "set", "v2"]
        subprocess.run([IP_BIN, *port, "down"], check=True, capture_output=True, timeout=15)
        cut = time.monotonic()
        try:
            wait_until("a2 marked lost", connected, "False", timeout=30, logs=logs)
            reason = json.loads(ctl_ok(h1, cfg, "stats", "--json", logs=logs))["clients"]["a2"]["lost_reason"]
            assert reason.startswith("no answer for"), reason
            # The outage is the scenario: it lasts 10 s whatever the hub noticed.
            time.sleep(max(0.0, 10.0 - (time.monotonic() - cut)))
        finally:
            subprocess.run([IP_BIN, *port, "up"], check=True, capture_output=True, timeout=15)
        wait_until("a2 back", connected, "True", timeout=COUNT_TIMEOUT, logs=logs)
        assert agent.text().count("registered with controller") >= 2
        # Reconciled: the connections the outage killed are replaced, both sides agree.
        wait_until("a2 count 2000", counter(h1, cfg, "a2", logs), 2000, logs=logs)
        wait_until("server count 2000", counter(h1, cfg, logs=logs), 2000, logs=logs)
        stats = json.loads(ctl_ok(h1, cfg, "stats", "--json", logs=logs))
        assert stats["ghosts"] == 0 and stats["clients"]["a2"]["target"] == 2000
        assert stats["clients"]["a2"]["disconnects"] >= 1
