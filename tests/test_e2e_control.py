"""The control plane's faults and guards through real processes on loopback:
a flood before login and a silent connection against a real hub, an agent hung or killed (marked lost, with the reason, within
seconds), the hub killed under load (agents stop after their grace period and
register again when a hub returns), roles (an agent key cannot drive the hub),
a secret file readable by others, and start-up errors as one line with exit 2.
"""

from __future__ import annotations

import json
import contextlib
import os
import signal
import socket
import ssl
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from connscale.control.auth import Credentials
from connscale.control.guard import LOGIN_TIMEOUT, PRELOGIN_BYTES
from tests.support.hub import Hub
from tests.support.procs import connscale, wait

pytestmark = pytest.mark.slow


def secret_of(h: Hub) -> bytes:
    return (h.tmp / "xdg" / "connscale" / "secret").read_bytes().strip()


def tls(sock: socket.socket) -> ssl.SSLSocket:
    """A TLS client on `sock` that takes the hub's own certificate as it is (as connscale's peers do)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context.wrap_socket(sock)


def client_row(h: Hub, name: str) -> dict:
    return h.stats()["clients"].get(name, {})


# ---------------------------------------------------------------- before login


def test_a_flood_before_login_is_cut_and_the_hub_stays_small(hub):
    h = hub()
    h.start()
    process = psutil.Process(h.proc.pid)
    before = process.memory_info().rss
    sent = 0
    # A Banana list of 640 KiB strings, the biggest Banana allows each, for ever.
    chunk = b"\x7f\x7f\x82" + (b"\x00\x80\x27\x82" + b"x" * 640 * 1024) * 4
    # Inside the control connection's TLS (any client may make one; the login is what it lacks).
    with tls(socket.create_connection(("127.0.0.1", h.control), timeout=10)) as sock:
        try:
            # send(), not sendall(): every byte the hub took counts, also those of a chunk
            # it cut off half-way (sendall would lose that count when the reset comes).
            while sent < 64 * 1024 * 1024:
                # One TLS record at a time: an SSL send of more is all or nothing when the reset comes.
                sent += sock.send(chunk[sent % len(chunk):][:16384])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
    assert sent < 16 * 1024 * 1024, f"the hub took {sent} bytes before login"
    assert process.memory_info().rss - before < 16 * 1024 * 1024
    # A connection that says nothing is dropped after the login deadline.
    with tls(socket.create_connection(("127.0.0.1", h.control), timeout=LOGIN_TIMEOUT + 10)) as idle:
        started = time.monotonic()
        try:
            while idle.recv(4096):  # the hub's Banana greeting, then the end
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass  # the hub aborts: a reset is an end too
        assert time.monotonic() - started < LOGIN_TIMEOUT + 10
    # The hub is unharmed and still answers its operator.
    assert h.count() == 0
    assert PRELOGIN_BYTES < sent


# ---------------------------------------------------------------- agents lost and found


def test_a_hung_agent_is_marked_lost_within_seconds_and_comes_back(hub):
    h = hub()
    h.start()
    with h.agent("a1") as agent:
        h.load(agent, "a1", 200)
        timeline_path = h.tmp / "rec" / "timeline.jsonl"
        # Only lines from here on are the silence's: an earlier late report (a loaded box) is another story.
        before = len(timeline_path.read_text().splitlines())
        os.kill(agent.pid, signal.SIGSTOP)  # the agent process we started
        try:
            row = wait("a1 marked lost", lambda: (r := client_row(h, "a1")) and not r["connected"] and r, 30)
            assert row["lost_reason"].startswith("no answer for"), row
            h.proc.wait_line("agent a1 lost: no answer for", 5)
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        # While it was silent the timeline went on without it: lines that count it with
        # its last report, marked stale with that report's age (issue 9.3).
        timeline = [json.loads(line) for line in timeline_path.read_text().splitlines()[before:-1]]
        stale = [r["clients"]["a1"] for r in timeline if "a1" in r.get("stale", ())]
        assert stale and all(s["connected"] and s["stale_s"] > 0 and s["open"] > 0 for s in stale), stale
        # Awake again: it reconnects with its session token and keeps its name and load.
        wait("a1 back", lambda: client_row(h, "a1").get("connected"), 60)
        assert client_row(h, "a1")["target"] == 200
        h.wait_count(200, "a1", timeout=60)


def test_a_killed_agent_is_marked_lost_at_once(hub):
    h = hub()
    h.start()
    agent = h.agent("a1")
    try:
        h.load(agent, "a1", 100)
        os.kill(agent.pid, signal.SIGKILL)
        row = wait("a1 marked lost", lambda: (r := client_row(h, "a1")) and not r["connected"] and r, 15)
        assert row["lost_reason"] == "its connection closed"
        # Its workers see their parent gone and leave; the servers see the connections close.
        h.wait_count(0, timeout=60)
    finally:
        agent.stop()


def test_the_hub_killed_under_load(hub):
    h = hub(grace=3)
    h.start()
    with h.agent("a1") as agent:
        h.load(agent, "a1", 300)
        timeline = h.tmp / "rec" / "timeline.jsonl"

        def recorded_open() -> int:
            lines = timeline.read_text().splitlines()
            return json.loads(lines[-1])["client"]["open"] if lines else -1

        wait("the timeline to record 300", lambda: recorded_open() == 300, 30)
        os.kill(h.proc.pid, signal.SIGKILL)  # the hub we started; its workers follow it
        h.proc.popen.wait(10)
        agent.wait_line("the hub is gone; holding our connections for 3 s", 30)
        agent.wait_line("no hub for 3 s: closing our 300 connections", 30)
        agent.wait_for(lambda: agent.last_status().get("open") == "0", 60, "the agent's load to stop")
        assert agent.running()
        # Every line the hub wrote is whole JSON: it never leaves half a second behind.
        records = [json.loads(line) for line in timeline.read_text().splitlines()]
        assert records and records[-1]["client"]["open"] == 300  # up to its last second
        # A hub comes back: the agent registers again, holding nothing, ready for orders.
        h.start()
        agent.wait_for(lambda: agent.text().count("registered with controller") >= 2, 60, "second registration")
        row = wait("a1 registered", lambda: client_row(h, "a1").get("connected") and client_row(h, "a1"), 30)
        assert row["target"] == 0
        assert h.ctl("start", "50", "--client", "a1").returncode == 0
        h.wait_count(50, "a1")


# ---------------------------------------------------------------- roles and secrets


def test_an_agent_key_runs_an_agent_and_nothing_else(hub, tmp_path: Path):
    h = hub()
    h.start()
    key = tmp_path / "agent.key"
    key.write_bytes(h.ctl("agent-key").stdout.strip().encode() + b"\n")
    key.chmod(0o600)
    with h.agent("a1", "--secret-file", str(key)) as agent:
        agent.wait_line("registered with controller", 30)
        r = subprocess.run(connscale("ctl", "--config", str(h.config), "count"), capture_output=True, text=True,
                           timeout=30, env=dict(os.environ, **h.env, CONNSCALE_SECRET=key.read_text().strip()))
        assert r.returncode == 4, r
        assert "logging in as operator needs the control secret" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert h.ctl("count", "--client", "a1").stdout.strip() == "0"


def test_a_secret_file_others_can_read_is_made_private(hub, tmp_path: Path):
    h = hub()
    secret = tmp_path / "hub.secret"
    secret.write_text("a-long-enough-secret-for-the-hub\n")
    secret.chmod(0o644)
    h.config.write_text(h.config.read_text().replace("control:\n", f"control:\n  secret_file: {secret}\n", 1))
    h.start()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert any("was readable by others (mode 0644); made it 0600" in line for line in h.proc.lines())
    env = dict(os.environ, **h.env, CONNSCALE_SECRET="a-long-enough-secret-for-the-hub")
    r = subprocess.run(connscale("ctl", "--config", str(h.config), "count"), capture_output=True, text=True,
                       timeout=30, env=env)
    assert r.returncode == 0, r


def test_start_up_errors_are_one_line_and_exit_2(hub, tmp_path: Path):
    h = hub()
    env = dict(os.environ, **h.env)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        cases = [
            # First, while no hub has written a secret for them to find.
            # The control layer's StartError, said by the tap with its program's name.
            (["agent", "--config", str(h.config), "--master", f"127.0.0.1:{h.control}"],
             "connscale-client: no control secret"),
            (["observe", "--config", str(h.config), "--master", f"127.0.0.1:{h.control}", "--pid", "1"],
             "connscale-observe: no control secret"),
            (["server", "--config", str(h.config), "--control", f"tcp:{port}:interface=127.0.0.1"],
             f"connscale-server: control.listen: cannot listen on tcp:{port}:interface=127.0.0.1: EADDRINUSE"),
            (["server", "--config", str(h.config), "--console", "telnet"],
             "connscale-server: control.console: the telnet console was removed"),
            (["ctl", "--config", str(h.config), "--master", "127.0.0.1:x", "count"], "--master"),
        ]
        for argv, needle in cases:
            r = subprocess.run(connscale(*argv), capture_output=True, text=True, timeout=60, env=env)
            out = (r.stdout + r.stderr).strip()
            assert r.returncode == 2, (argv, out)
            assert needle in out and len([line for line in out.splitlines() if needle in line]) == 1, (argv, out)
            assert "Traceback" not in out, out


def test_agent_key_command_prints_keys_of_the_hub_that_are_not_the_secret(hub):
    h = hub()
    h.start()
    secret = secret_of(h)
    r = subprocess.run(connscale("agent-key", "--config", str(h.config)), capture_output=True, text=True,
                       timeout=30, env=dict(os.environ, **h.env))
    assert r.returncode == 0, r
    line = r.stdout.strip()
    assert line.startswith("connscale-agent-key:2:") and secret.decode() not in line
    salt = bytes.fromhex((h.tmp / "xdg" / "connscale" / "control-salt").read_text().strip())
    assert Credentials.from_secret(line.encode()).password("agent:a9", salt) == \
        Credentials.from_secret(secret).password("agent:a9", salt)
    # --name: a key for that agent name only.
    one = h.ctl("agent-key", "--name", "a9").stdout.strip()
    assert ":a9:" in one
    with h.agent("a9", "--secret-file", str(write_key(h.tmp / "a9.key", one))) as agent:
        agent.wait_line("registered with controller", 30)
    with h.agent("a8", "--secret-file", str(write_key(h.tmp / "a8.key", one))) as other:
        other.wait_for(lambda: not other.running(), 30, "an agent with another name's key to exit")
        assert "this agent key is for agent 'a9' only, not 'a8'" in other.text()


def write_key(path: Path, line: str) -> Path:
    path.write_text(line + "\n")
    path.chmod(0o600)
    return path


CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")


@pytest.mark.skipif(not (CGROUP_MEMORY / "cgroup.procs").exists() or os.geteuid() != 0,
                    reason="needs root and the cgroup v1 memory controller")
def test_a_hub_refuses_more_server_workers_than_memory_holds(hub, tmp_path: Path):
    # A typo in server.workers must not fork a hundred interpreters into a host without
    # the memory for them: one line, exit 2, no worker started. 1 GiB holds ~25 workers.
    h = hub()
    group = CGROUP_MEMORY / f"connscale-test-{os.getpid()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(1 << 30))
        argv = connscale("server", "--config", str(h.config), "--workers", "64")
        # The shell moves itself into the group, then becomes the hub: every child inherits it.
        script = f'echo $$ > {group}/cgroup.procs && exec "$@"'
        r = subprocess.run(["sh", "-c", script, "sh", *argv], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, **h.env))
        out = (r.stdout + r.stderr).strip()
        assert r.returncode == 2, out
        line = "the hub will not start 64 server workers: they need about 2,560 MB"
        assert len([x for x in out.splitlines() if line in x]) == 1, out
        assert "server.workers is 64" in out and "Traceback" not in out
        assert (group / "cgroup.procs").read_text().strip() == ""  # nothing of it is left running
    finally:
        deadline = time.monotonic() + 5
        while group.exists() and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                group.rmdir()
            time.sleep(0.1)
