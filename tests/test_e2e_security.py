"""Issue 17, attacked through the real thing: a real hub, real agents, `connscale ctl` and
`connscale run` as processes on loopback, and hostile peers (tests/support/hostile.py).

What README's "Security" section claims, and the test that holds each claim:

| who | claim | test |
|---|---|---|
| remote peer without the secret | a relay (a hub it runs, that the victim reached) gets a refused login and nothing else | test_a_relay_gets_a_refused_login_and_nothing_else |
| remote peer without the secret | gets nothing to crack offline; each guess is one throttled login | test_a_proof_collector_gets_nothing_to_crack_offline |
| remote peer without the secret | bytes no login is made of cost one line per interval and the connection | test_pre_login_garbage_is_one_line_and_the_connection_ends_at_once; test_e2e_control: test_a_flood_before_login_is_cut_and_the_hub_stays_small |
| local user | failing logins on purpose does not shut the operator out: other users are counted apart, and "too many failed logins" is retried by ctl, agents and runs | test_another_users_guesses_do_not_slow_the_operator; test_a_lockout_attempt_does_not_stop_a_real_run; test_ctl_waits_out_a_throttle_instead_of_failing |
| local user | sees no secret of `clients.*.env` in `ps` or in a run directory, nor the control secret in a worker's environment | test_clients_env_travels_over_stdin_never_in_ps; test_run_parts: test_clients_env_values_are_in_no_run_file_and_reach_the_hub_through_its_environment; test_workers_do_not_inherit_the_control_secret |
| local user | a link left as a report's temporary file is not followed | test_report_does_not_follow_a_planted_temporary_file |
| agent-key holder | cannot flood the hub: names, events, failure keys and worker rows are bounded per agent, departed agents leave the live record, ctl stats and watch keep working | test_an_agent_key_cannot_flood_the_hub |
| agent-key holder | cannot take the name of an agent that is away; the owner gets it back | test_an_agent_key_cannot_take_a_departed_agents_name |
| agent-key holder | its host and failure causes reach terminals as text, never as escape sequences or markup (and ctl never exits 0 on a crash) | test_an_agents_host_and_causes_reach_terminals_as_text; test_a_crash_of_ctl_after_login_is_not_exit_0 |
| agent-key holder | cannot act as operator (test_e2e_control: test_an_agent_key_runs_an_agent_and_nothing_else) | |
| operator | a key for one agent name logs in as that agent only (test_e2e_control: test_agent_key_command_prints_keys_of_the_hub_that_are_not_the_secret) | |
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from connscale.control.auth import Credentials, confirmation
from connscale.control.throttle import THROTTLE_FAILURES
from connscale.control.registry import SHOW_DEPARTED
from tests.support.hub import Hub
from tests.support.procs import Proc, connscale, free_port, wait

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def hostile(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.support.hostile", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, **(env or {})))


def hostile_proc(tmp: Path, name: str, *args: str) -> Proc:
    return Proc([sys.executable, "-m", "tests.support.hostile", *args], tmp / f"{name}.log", cwd=ROOT)


def agent_key(h: Hub, path: Path, name: str | None = None) -> Path:
    r = h.ctl("agent-key", *(["--name", name] if name else []))
    assert r.returncode == 0, r.stderr
    path.write_text(r.stdout.strip() + "\n")
    path.chmod(0o600)
    return path


def ctl_at(h: Hub, port: int, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(connscale("ctl", "--config", str(h.config), "--master", f"127.0.0.1:{port}", *args),
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **h.env))


# ---------------------------------------------------------------- the login


def test_a_relay_gets_a_refused_login_and_nothing_else(hub, tmp_path: Path):
    h = hub()
    h.start()
    port = free_port()
    with hostile_proc(tmp_path, "relay", "relay", str(port), str(h.control)) as relay:
        relay.wait_line("RELAYING", 30)
        # ctl, dialling the relay, never sends a proof the relay could use: the hub's cannot check out.
        r = ctl_at(h, port, "phase", "relayed")
        assert r.returncode == 4, r
        assert "did not prove it knows ours" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        # An agent dialling the relay is refused for good (not our hub) and takes no order from it.
        agent = Proc(connscale("agent", "--config", str(h.config), "--master", f"127.0.0.1:{port}", "--name", "r1"),
                     tmp_path / "relayed-agent.log", env=h.env)
        try:
            agent.wait_for(lambda: not agent.running(), 30, "the relayed agent to give up")
            assert agent.popen.returncode == 2
            assert "did not prove it knows ours" in agent.text()
            assert "registered with controller" not in agent.text()
        finally:
            agent.stop()
    # Nothing of it reached the real hub: no agent, no phase.
    stats = h.stats()
    assert "r1" not in stats["clients"] and stats["phase"] != "relayed"
    # The same ctl dialling the hub itself gets in.
    assert h.ctl("phase", "direct").returncode == 0


def test_a_proof_collector_gets_nothing_to_crack_offline(hub):
    h = hub()
    h.start()
    r = hostile("collect", str(h.control), str(THROTTLE_FAILURES + 5))
    records = [json.loads(line) for line in r.stdout.splitlines()]
    answered = [rec for rec in records if "hub_confirm" in rec]
    # Each guess is an online login: the throttle answers THROTTLE_FAILURES of them, then none.
    assert len(answered) == THROTTLE_FAILURES, records
    assert all("too many failed logins" in rec["ended"] for rec in records[THROTTLE_FAILURES:])
    # The offline attack, with the real secret in its word list: for each candidate, redo our
    # side of SPAKE2 with the same randomness and check the hub's confirmation. Only the guess
    # actually sent could ever match; the secret itself does not.
    from spake2 import SPAKE2_A

    real = Credentials.from_secret((h.tmp / "xdg" / "connscale" / "secret").read_bytes())
    for rec in answered:
        salt, tr = bytes.fromhex(rec["salt"]), bytes.fromhex(rec["transcript"])
        entropy = bytes.fromhex(rec["entropy"])
        for candidate in (b"password1", b"a wrong guess", real.password("operator", salt)):
            attempt = SPAKE2_A(candidate, idA=b"peer\0" + tr, idB=b"hub\0" + tr, entropy_f=lambda n: entropy[:n])
            attempt.start()
            key = attempt.finish(bytes.fromhex(rec["hub_message"]))
            assert confirmation(key, "hub").hex() != rec["hub_confirm"], candidate
    # And the hub's log has one line per interval about it, not one per attempt.
    h.proc.wait_line("control: refused", 15)
    assert len([x for x in h.proc.lines() if "control: refused" in x]) <= 2


# ---------------------------------------------------------------- the throttle


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to guess as another user (nobody)")
def test_another_users_guesses_do_not_slow_the_operator(hub, tmp_path: Path):
    h = hub()
    h.start()
    with hostile_proc(tmp_path, "guesser", "guess", str(h.control), "400", "25", "65534") as guesser:
        guesser.wait_for(lambda: "too many failed logins" in guesser.text(), 30, "the guesser to be throttled")
        # While that user keeps guessing (and is throttled), the operator gets in at once.
        started = time.monotonic()
        r = h.ctl("count")
        assert r.returncode == 0 and r.stdout.strip() == "0", r
        assert "throttles logins" not in r.stderr
        assert time.monotonic() - started < 20  # no throttle wait of its own (a window is 10 s)
        assert guesser.running()
    assert "LOGGED IN" not in guesser.text()
    assert re.search(r"127\.0\.0\.1 uid 65534 x\d+", h.proc.text())


def test_ctl_waits_out_a_throttle_instead_of_failing(hub):
    h = hub()
    h.start()
    r = hostile("guess", str(h.control), str(THROTTLE_FAILURES + 2), "20")
    assert r.stdout.count("wrong control secret") == THROTTLE_FAILURES, r.stdout
    assert "too many failed logins" in r.stdout
    # The same user, the same address: ctl is throttled too, says so, waits, and gets in.
    c = h.ctl("count")
    assert c.returncode == 0 and c.stdout.strip() == "0", c
    assert "throttles logins from here (too many failed logins from 127.0.0.1" in c.stderr, c.stderr


def test_a_lockout_attempt_does_not_stop_a_real_run(tmp_path: Path):
    from tests.support.runconfig import write_config

    config = write_config(tmp_path, target="300")
    port = int(re.search(r'listen: "tcp:(\d+)', config.read_text()).group(1))
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    run = Proc(connscale("run", "-c", str(config)), tmp_path / "run.log", env=env, cwd=tmp_path)
    try:
        # As soon as the run's hub listens, a burst of wrong logins from the run's own user and address.
        def guessed() -> bool:
            r = hostile("guess", str(port), str(THROTTLE_FAILURES + 3), "10")
            return "wrong control secret" in r.stdout

        wait("the run's hub to take guesses", guessed, 60, every=0.1)
        run.popen.wait(180)
    finally:
        run.stop()
    out = run.text()
    assert run.popen.returncode == 0, out[-3000:]
    assert "HELD: held=300 target=300" in out, out[-3000:]
    assert "control secret is not the run's" not in out


# ---------------------------------------------------------------- before login


def test_pre_login_garbage_is_one_line_and_the_connection_ends_at_once(hub):
    h = hub()
    h.start()
    before = len(h.proc.text())
    r = hostile("garbage", str(h.control), "20")
    sent = [int(x.split()[1]) for x in r.stdout.splitlines() if x.startswith("SENT")]
    assert len(sent) == 20, r.stdout + r.stderr
    # Dropped at the first error: the hub took the first write of each, not what followed.
    assert max(sent) <= 4096, sent
    time.sleep(1)
    grown = h.proc.text()[before:]
    assert "Traceback" not in grown
    assert len([x for x in grown.splitlines() if "control: refused" in x]) <= 2, grown
    assert len(grown) < 4096, grown  # 20 connections, not 24 bytes of log per byte they sent
    assert h.count() == 0


# ---------------------------------------------------------------- what an agent key can do


def timeline_lines(h: Hub) -> list[str]:
    path = h.tmp / "rec" / "timeline.jsonl"
    return path.read_text().splitlines()[:-1] if path.exists() else []


def test_an_agent_key_cannot_flood_the_hub(hub, tmp_path: Path):
    h = hub()
    h.start()
    key = agent_key(h, tmp_path / "agent.key")
    flood = hostile_proc(tmp_path, "flood", "flood", str(h.control), str(key), "300")
    try:
        flood.wait_line("FLOODING", 90)
        seen = len(timeline_lines(h))
        time.sleep(5)
        lines = timeline_lines(h)[seen:]
        assert lines
        # While it floods: each line stays small (the agent's report is bounded per agent:
        # its worker rows to what it was asked to run, its events to a rate and a total).
        assert max(map(len, lines)) < 256 * 1024, max(map(len, lines))
        row = json.loads(lines[-1])["clients"]["flooder"]
        assert len(row["workers"]) <= 2 and len(json.loads(lines[-1])["events"]) <= 40
        # ctl stats and ctl watch work through it.
        assert h.ctl("stats", "--json").returncode == 0
        w = h.ctl("watch", "--count", "2", "--interval", "0.5")
        assert w.returncode == 0, w.stderr
        flood.wait_for(lambda: not flood.running(), 60, "the flooder to leave")
        assert "NAMES 300" in flood.text()
    finally:
        flood.stop()
    # Once they are gone, their rows leave the live record (the events keep them).
    time.sleep(SHOW_DEPARTED + 3)
    last = json.loads(timeline_lines(h)[-1])
    assert not [n for n in last["clients"] if n.startswith("flood")], list(last["clients"])[:5]
    assert len(timeline_lines(h)[-1]) < 8 * 1024
    assert json.loads(h.ctl("stats", "--json").stdout)["clients"] == {}


def test_an_agent_key_cannot_take_a_departed_agents_name(hub, tmp_path: Path):
    h = hub()
    h.start()
    key = agent_key(h, tmp_path / "agent.key")
    owner = h.agent("a1", "--secret-file", str(key))
    owner.wait_line("registered with controller", 30)
    os.kill(owner.pid, 9)  # the agent we started goes away (a crash, a reboot)
    owner.stop()
    wait("a1 lost", lambda: not h.stats()["clients"].get("a1", {}).get("connected", True), 30)
    squat = hostile("squat", str(h.control), str(key), "a1")
    assert "REFUSED" in squat.stdout and "belongs to an agent that left" in squat.stdout, squat.stdout + squat.stderr
    # The owner, restarted on its host, comes back under its name.
    with h.agent("a1", "--secret-file", str(key)) as again:
        again.wait_line("registered with controller", 30)
        assert h.stats()["clients"]["a1"]["connected"]


def test_an_agents_host_and_causes_reach_terminals_as_text(hub, tmp_path: Path):
    h = hub()
    h.start()
    key = agent_key(h, tmp_path / "agent.key")
    evil_host = hostile("agent", str(h.control), str(key), "e1", "h\x1b]0;owned\x07\x1b[2J", "steady:x")
    assert "REFUSED" in evil_host.stdout and "AgentInfo.host" in evil_host.stdout, evil_host.stdout
    with hostile_proc(tmp_path, "markup", "agent", str(h.control), str(key), "e2", "h2", "steady:[/bold]x") as m:
        m.wait_line("REGISTERED", 30)
        h.proc.wait_line("agent e2: report refused", 15)
        clients = h.ctl("clients")
        assert clients.returncode == 0 and "\x1b" not in clients.stdout
        w = h.ctl("watch", "--count", "2", "--interval", "0.5")
        assert w.returncode == 0, w.stderr
        assert "\x1b" not in w.stdout and "[/bold]" not in w.stdout


CRASHING_WORK = """
import sys
from connscale.app.cli import operator_session

def work(reactor, perspective):
    raise ValueError("a display that cannot show what it got")

print(operator_session("127.0.0.1", int(sys.argv[1]), sys.argv[2].encode(), None, work))
"""


def test_a_crash_of_ctl_after_login_is_not_exit_0(hub):
    h = hub()
    h.start()
    secret = (h.tmp / "xdg" / "connscale" / "secret").read_text().strip()
    r = subprocess.run([sys.executable, "-c", CRASHING_WORK, str(h.control), secret], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, **h.env))
    assert r.stdout.strip() == "(1, 'ValueError: a display that cannot show what it got')", r.stdout + r.stderr


# ---------------------------------------------------------------- secrets on this host


STAND_IN_SSH = """#!/bin/sh
# Stands in for ssh: skips the options and the destination, runs the remote command here.
while [ $# -gt 1 ] && [ "$1" != "--" ]; do shift; done
shift
exec sh -c "$1"
"""


def test_clients_env_travels_over_stdin_never_in_ps(hub, tmp_path: Path):
    h = hub()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(STAND_IN_SSH)
    (bin_dir / "ssh").chmod(0o755)
    token = "tok-" + os.urandom(8).hex()
    h.config.write_text(h.config.read_text() + f"""
clients:
  c1:
    host: 127.0.0.1
    python: {sys.executable}
    master: 127.0.0.1:{h.control}
    env: {{CS_TOKEN: "{token}"}}
""")
    h.env["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    h.start()
    seen: list[str] = []

    def watch_ps() -> bool:
        for p in psutil.process_iter(["cmdline"]):
            line = " ".join(p.info["cmdline"] or ())
            if token in line:
                seen.append(line)
        return False

    starting = subprocess.Popen(connscale("ctl", "--config", str(h.config), "client-start", "c1"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, **h.env))
    deadline = time.monotonic() + 60
    while starting.poll() is None and time.monotonic() < deadline:
        watch_ps()
        time.sleep(0.05)
    out, err = starting.communicate(timeout=30)
    assert starting.returncode == 0 and "started c1" in out, err
    watch_ps()
    assert not seen, seen
    # It reached the agent all the same: in its environment.
    agents = [p for p in psutil.process_iter(["cmdline"]) if "--name" in (p.info["cmdline"] or ())
              and "c1" in (p.info["cmdline"] or ()) and "agent" in (p.info["cmdline"] or ())]
    assert agents and agents[0].environ().get("CS_TOKEN") == token
    assert h.ctl("client-stop", "c1").returncode == 0


def test_workers_do_not_inherit_the_control_secret(hub):
    h = hub()
    h.env["CONNSCALE_SECRET"] = "a-secret-for-the-workers-test-7c1"
    h.start()
    workers = wait("the hub's workers", lambda: [c for c in psutil.Process(h.proc.pid).children(recursive=True)
                                                 if "connscale.procs.worker" in " ".join(c.cmdline())], 30)
    assert "CONNSCALE_SECRET" in psutil.Process(h.proc.pid).environ()
    for worker in workers:
        assert "CONNSCALE_SECRET" not in worker.environ(), worker.pid


def test_report_does_not_follow_a_planted_temporary_file(tmp_path: Path):
    from tests.support.timelines import make_records, write_run

    run_dir = write_run(tmp_path / "run", make_records())
    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's file\n")
    (run_dir / "report.html.tmp").symlink_to(victim)
    r = subprocess.run(connscale("report", str(run_dir)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "the victim's file\n"
    assert (run_dir / "report.html").read_text().lower().startswith("<!doctype html>")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
