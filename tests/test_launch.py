"""connscale.control.launch: ssh argv building, failure explanations, and real launches through a
throw-away sshd (tests/support/sshd.py).

The real launches need a running reactor, which (per the spec) only runs inside child
processes: each scenario is one child running DRIVER under ``task.react`` and reporting a
JSON result; the remote side is REMOTE, a python one-liner standing in for the agent.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from connscale.config.settings import ClientHost
from connscale.control.launch import (
    ENV_PRELUDE,
    LaunchError,
    explain_failure,
    launch,
    remote_agent_argv,
    ssh_argv,
    stdin_for,
)
from tests.support.procs import free_port
from tests.support.sshd import remote_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ------------------------------------------------------------------------ pure unit tests


def make_host(**kw: object) -> ClientHost:
    fields: dict = {"name": "client1", "host": "198.18.0.2", "user": "root"}
    fields.update(kw)
    return ClientHost(**fields)


def test_remote_agent_argv_minimal():
    host = make_host()
    assert remote_agent_argv(host, "198.18.0.1:8790") == [
        "python3", "-m", "connscale", "agent", "--master", "198.18.0.1:8790", "--name", "client1",
        "--secret-file", "/dev/stdin", "--lifeline", "--workers", "auto",
    ]


def test_remote_agent_argv_full():
    host = make_host(python="/opt/venv/bin/python", workers=4,
                     source_ips=("10.0.0.1", "10.0.0.2"), env={"A": "1"})
    argv = remote_agent_argv(host, "h:1", extra=["--status-interval", "1"])
    assert argv[0] == "/opt/venv/bin/python"
    assert argv[-6:] == ["--source-ip", "10.0.0.1,10.0.0.2", "--workers", "4", "--status-interval", "1"]
    assert "env" not in argv  # the environment is ssh_argv's job


def test_ssh_argv_layout():
    host = make_host(port=2222, ssh_options=("-i", "/k", "-o", "ConnectTimeout=3"))
    argv = ssh_argv(host, ["python3", "-c", "print('a b')"], ssh="/usr/bin/ssh")
    assert argv == [
        "/usr/bin/ssh", "-i", "/k", "-o", "ConnectTimeout=3",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
        "-p", "2222", "root@198.18.0.2", "--", "python3 -c 'print('\"'\"'a b'\"'\"')'",
    ]
    # the user's options precede ours: for ssh the first value of an option wins
    assert argv.index("ConnectTimeout=3") < argv.index("ConnectTimeout=10")
    assert shlex.split(argv[-1]) == ["python3", "-c", "print('a b')"]


def test_ssh_argv_no_user_and_env():
    host = make_host(user=None, env={"PYTHONPATH": "/x y", "Q": "it's"})
    argv = ssh_argv(host, ["python3", "-V"])
    assert argv[0] == "ssh"
    assert argv[-3:-1] == ["198.18.0.2", "--"]
    # The values travel over stdin, read by a prelude of the remote shell: never in argv.
    assert shlex.split(argv[-1]) == ["sh", "-c", ENV_PRELUDE, "sh", "python3", "-V"]
    assert not any("/x y" in a or "it's" in a for a in argv)
    assert stdin_for(host, b"connscale-agent-key:...") == b"PYTHONPATH=/x y\nQ=it's\n\nconnscale-agent-key:...\n"
    assert stdin_for(make_host(), b"k\n") == b"k\n"


def test_ssh_argv_rejects_empty_command():
    with pytest.raises(ValueError):
        ssh_argv(make_host(), [])


def test_launch_without_ssh_client_is_a_launch_error():
    with pytest.raises(LaunchError) as info:
        launch(None, make_host(), ["true"], b"s\n", print, ssh="/nonexistent/ssh")
    assert "\n" not in str(info.value) and "ssh client not found" in str(info.value)


@pytest.mark.parametrize("code, tail, expected", [
    (255, ["root@198.18.0.2: Permission denied (publickey)."],
     "client1 (root@198.18.0.2:22): ssh authentication refused (Permission denied (publickey)); "
     "check the key in ssh_options or the remote authorized_keys"),
    (255, ["ssh: connect to host 198.18.0.2 port 22: Connection refused"],
     "client1 (root@198.18.0.2:22): host unreachable (Connection refused)"),
    (255, ["ssh: connect to host 198.18.0.2 port 22: No route to host"], "host unreachable (No route to host)"),
    (255, ["ssh: connect to host 198.18.0.2 port 22: Connection timed out"],
     "host unreachable (Connection timed out)"),
    (255, ["ssh: Could not resolve hostname nosuch: Name or service not known"],
     "host unreachable (Could not resolve hostname nosuch: Name or service not known)"),
    (255, ["Host key verification failed."], "ssh host key problem (Host key verification failed)"),
    (255, ["kex_exchange_identification: read: Connection reset by peer"],
     "closed the connection before login"),
    (255, ["Timeout, server 198.18.0.2 not responding."], "ssh connection lost (Timeout, server"),
    (255, ["something odd"], "ssh failed (exit 255): something odd"),
    (127, ["bash: line 1: python3: command not found"],
     "client1 (root@198.18.0.2:22): remote command not found: python3 (exit 127); "
     "set clients.client1.python"),
    (126, ["bash: line 1: /opt/py: Permission denied"], "remote command not executable: python3 (exit 126"),
    (1, ["/usr/bin/python3: No module named connscale"],
     "client1 (root@198.18.0.2:22): connscale is not installed for /usr/bin/python3 on the remote host "
     "(No module named connscale)"),
    (1, ["/usr/bin/python3: No module named connscale.__main__; 'connscale' is a package and cannot "
         "be directly executed"], "cannot run as `python -m connscale`"),
    (1, ["Traceback (most recent call last):", "ModuleNotFoundError: No module named 'hdrh'"],
     "missing on the remote host (No module named 'hdrh')"),
    (3, ["boom", "RuntimeError: bad\x1b[31m thing"],
     "client1 (root@198.18.0.2:22): agent exited with code 3: RuntimeError: bad [31m thing"),
    (0, [], "agent exited with code 0: no error output"),
    (-9, ["x"], "ssh was killed by SIGKILL: x"),
    (None, ["x"], "agent ended: x"),
    # an agent's own complaint about a refused connection is not ssh being unreachable
    (1, ["connscale-agent: master 1.2.3.4:8790: Connection refused"], "agent exited with code 1:"),
])
def test_explain_failure(code, tail, expected):
    text = explain_failure(make_host(), code, tail)
    assert expected in text
    assert "\n" not in text


def test_explain_failure_labels():
    assert explain_failure(make_host(host="::1", port=2200), 255, []).startswith("client1 (root@[::1]:2200): ")
    text = explain_failure(make_host(user=None), 1, ["x" * 1000])
    assert "(" in text and "@198.18.0.2:22)" in text and len(text) < 300


# --------------------------------------------------------------- real ssh, real sshd

# Stands in for the agent: reads the secret the way `--secret-file /dev/stdin` does, then
# holds on to its lifeline (stdin) until EOF.
REMOTE = r"""
import os, sys, time
pidfile, mode = sys.argv[1], sys.argv[2]
with open("/dev/stdin") as f:
    secret = f.readline().rstrip("\n")
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.rename(pidfile + ".tmp", pidfile)
print("env:" + os.environ.get("CS_TEST", "-"), flush=True)
print("to-stderr 'quoted' \"too\"", file=sys.stderr, flush=True)
print("got:" + secret, flush=True)
if mode == "ignore-eof":
    time.sleep(20)   # deaf to its lifeline; bounded in case the test cannot kill it
    sys.exit(0)
rest = sys.stdin.buffer.read()   # returns at EOF: the lifeline was cut
print("eof:%d" % len(rest), flush=True)
sys.exit(3)
"""

DRIVER = r"""
import json, os, signal, sys, time
from twisted.internet import defer, task
from connscale.config.settings import ClientHost
from connscale.control.launch import explain_failure, launch, stdin_for

def within(reactor, d, seconds, what):
    out = defer.Deferred()
    def expire():
        if not out.called:
            out.errback(RuntimeError("timed out waiting for " + what))
    call = reactor.callLater(seconds, expire)
    def fire(result):
        if not out.called:
            call.cancel()
            out.callback(result)
        return result
    d.addBoth(fire)
    return out

@defer.inlineCallbacks
def main(reactor, raw):
    spec = json.loads(raw)
    h = dict(spec["host"])
    h["ssh_options"] = tuple(h.get("ssh_options", ()))
    host = ClientHost(**h)
    res = {"lines": []}
    ready = defer.Deferred()
    def on_line(line):
        res["lines"].append(line)
        if spec.get("ready") and spec["ready"] in line and not ready.called:
            ready.callback(None)
    # As the hub does: host.env's lines ahead of the key line (never on the command line).
    agent = launch(reactor, host, spec["remote"], stdin_for(host, spec["stdin"].encode()), on_line,
                   **spec.get("launch", {}))
    res["pid"] = agent.pid
    res["running_at_start"] = agent.running
    try:
        if spec["action"] != "wait":
            yield within(reactor, ready, 15, "ready line")
            res["running_when_ready"] = agent.running
            res["own_session"] = os.getsid(agent.pid) != os.getsid(0)
            t0 = time.monotonic()
            if spec["action"] == "stop":
                yield within(reactor, agent.stop(**spec.get("stop", {})), 15, "stop")
                res["stop_seconds"] = time.monotonic() - t0
                res["second_stop_called"] = agent.stop().called
            elif spec["action"] == "kill":
                os.kill(agent.pid, signal.SIGKILL)
        res["code"] = yield within(reactor, agent.ended, 20, "ssh to end")
    except Exception as e:
        res["error"] = str(e)
        if agent.running:
            os.kill(agent.pid, signal.SIGKILL)
            yield agent.ended
    res["running_after"] = agent.running
    res["stderr_tail"] = list(agent.stderr_tail)
    res["explain"] = explain_failure(host, agent.exit_code, agent.stderr_tail)
    print("RESULT " + json.dumps(res), flush=True)

task.react(main, [sys.argv[1]])
"""


def run_driver(spec: dict, timeout: float = 30) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(spec)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group of the child we started
        proc.communicate()
        raise
    results = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert results, f"driver failed (rc={proc.returncode}):\n{out}\n{err}"
    res = json.loads(results[-1][len("RESULT "):])
    assert "error" not in res, f"{res}\n{err}"
    return res


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def remote_pids():
    """Pids of remote stand-ins; any still alive afterwards are killed (we started them)."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def host_dict(sshd, key: str | None = None, **kw: object) -> dict:
    options = sshd.ssh_options(key=key)
    i = options.index("-p")
    del options[i:i + 2]  # ClientHost.port says where to connect
    d = {"name": "client1", "host": sshd.host, "user": sshd.user, "port": sshd.port,
         "ssh_options": options, "python": remote_python}
    d.update(kw)
    return d


def remote_argv(pidfile: str, mode: str = "normal") -> list[str]:
    return [remote_python, "-c", REMOTE, pidfile, mode]


def read_pid(path) -> int:
    return int(path.read_text())


def test_secret_lines_and_stop_via_lifeline(sshd, tmp_path, remote_pids):
    pidfile = tmp_path / "remote.pid"
    res = run_driver({
        "host": host_dict(sshd, env={"CS_TEST": "a b 'c'"}),
        "remote": remote_argv(str(pidfile)),
        "stdin": "s3cret word\n",
        "ready": "got:",
        "action": "stop",
        "stop": {"grace": 8.0},
    })
    remote_pids.append(read_pid(pidfile))
    assert res["running_at_start"] and res["running_when_ready"] and not res["running_after"]
    assert res["own_session"]  # a Ctrl-C on the hub's terminal does not reach ssh
    lines = res["lines"]
    assert "got:s3cret word" in lines                # the secret arrived on the remote stdin
    assert "env:a b 'c'" in lines                    # host.env, quoted through the remote shell
    assert "to-stderr 'quoted' \"too\"" in lines      # remote stderr goes to on_line too
    assert res["stderr_tail"] == ["to-stderr 'quoted' \"too\""]
    # closing stdin was enough: the remote saw EOF, said so, and its exit code came back
    assert "eof:0" in lines
    assert res["code"] == 3
    assert res["stop_seconds"] < 5.0
    assert res["second_stop_called"]
    assert wait_gone(remote_pids[0])


def test_killed_ssh_cuts_the_lifeline(sshd, tmp_path, remote_pids):
    pidfile = tmp_path / "remote.pid"
    res = run_driver({
        "host": host_dict(sshd), "remote": remote_argv(str(pidfile)), "stdin": "x\n",
        "ready": "got:", "action": "kill",
    })
    remote_pids.append(read_pid(pidfile))
    assert res["code"] == -signal.SIGKILL
    assert "ssh was killed by SIGKILL" in res["explain"]
    assert wait_gone(remote_pids[0]), "remote process survived its ssh"


def test_stop_escalates_to_sigterm_when_remote_ignores_eof(sshd, tmp_path, remote_pids):
    pidfile = tmp_path / "remote.pid"
    res = run_driver({
        "host": host_dict(sshd), "remote": remote_argv(str(pidfile), "ignore-eof"), "stdin": "x\n",
        "ready": "got:", "action": "stop", "stop": {"grace": 0.5, "term_grace": 5.0},
    })
    remote_pids.append(read_pid(pidfile))
    assert 0.4 < res["stop_seconds"] < 4.0
    assert res["code"] != 0 and not res["running_after"]
    # A remote that does not watch its stdin outlives ssh: --lifeline is the agent's job.
    # (remote_pids' teardown kills it.)


def test_stop_escalates_to_sigkill(tmp_path):
    fake = tmp_path / "fake-ssh"
    fake.write_text(f"#!{sys.executable}\n"
                    "import signal, sys, time\n"
                    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    "print('fake ready', ' '.join(sys.argv[1:3]), flush=True)\n"
                    "time.sleep(30)\n")
    fake.chmod(0o755)
    res = run_driver({
        "host": {"name": "client1", "host": "127.0.0.1"}, "remote": ["true"], "stdin": "x\n",
        "launch": {"ssh": str(fake)}, "ready": "fake ready", "action": "stop",
        "stop": {"grace": 0.3, "term_grace": 0.3},
    })
    assert res["lines"][0].startswith("fake ready ")
    assert res["code"] == -signal.SIGKILL
    assert 0.5 < res["stop_seconds"] < 4.0
    assert not alive(res["pid"])


def test_auth_refused(sshd):
    res = run_driver({
        "host": host_dict(sshd, key=sshd.host_key),  # a valid key, but not an authorized one
        "remote": ["true"], "stdin": "x\n", "action": "wait",
    })
    assert res["code"] == 255
    assert "ssh authentication refused (Permission denied (publickey))" in res["explain"], res


def test_connection_refused_is_unreachable(sshd):
    port = free_port()
    res = run_driver({"host": host_dict(sshd, port=port), "remote": ["true"], "stdin": "x\n",
                      "action": "wait"})
    assert res["code"] == 255
    assert res["explain"] == f"client1 (root@127.0.0.1:{port}): host unreachable (Connection refused)"


def test_missing_remote_python(sshd):
    host = host_dict(sshd, python="/nonexistent/python3", env={"CS_TEST": "1"})
    res = run_driver({
        "host": host, "remote": remote_agent_argv(ClientHost(**{**host, "ssh_options": ()}), "127.0.0.1:1"),
        "stdin": "x\n", "action": "wait",
    })
    assert res["code"] == 127
    assert res["explain"] == (f"client1 (root@127.0.0.1:{sshd.port}): remote command not found: "
                              "/nonexistent/python3 (exit 127); set clients.client1.python")
