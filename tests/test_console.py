"""The operator console: real sshd-less SSH (Twisted conch) driven by the real OpenSSH client.

Servers run in a child Python process with its own reactor; the tests talk to it with
`ssh -tt` (or a plain socket for telnet) and kill it by pid afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from twisted.conch.manhole import ManholeInterpreter
from twisted.internet import defer
from twisted.internet.testing import MemoryReactor

from connscale.config.settings import ControlSettings
from connscale.control.console import (
    ConsoleError,
    TELNET_REMOVED,
    ConsoleService,
    Readable,
    _ConsoleInterpreter,
    make_console,
    wrap_namespace,
)
from tests.support.console import Reader, clean

REPO = Path(__file__).resolve().parents[1]
needs_ssh = pytest.mark.skipif(not (shutil.which("ssh") and shutil.which("ssh-keygen")),
                               reason="needs the OpenSSH client and ssh-keygen")

SERVER = textwrap.dedent('''
    import sys
    from twisted.internet import reactor, task
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from connscale.config.settings import ControlSettings
    from connscale.control.console import make_console

    mode, keys, state_dir = sys.argv[1:4]
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    opened = [0]

    def connections_start(n):
        """Open n more connections."""
        opened[0] += n
        return {"requested": n}

    def count_connections():
        """How many connections are open."""
        return {"connections": opened[0]}

    def stats():
        """Per-client statistics."""
        return task.deferLater(reactor, 0.05, lambda: {
            "client-a": {"open": opened[0], "rtt_p50_ms": 0.25},
            "client-b": {"open": 0, "rtt_p50_ms": None},
        })

    control = ControlSettings(console=mode, console_listen="tcp:0:interface=127.0.0.1",
                              console_keys=keys)
    svc = make_console(reactor, control, {"connections_start": connections_start,
                       "count_connections": count_connections, "stats": stats}, state_dir)
    svc.privilegedStartService()
    svc.startService()
    svc.when_listening().addCallback(lambda port: print(port.getHost().port, flush=True))
    reactor.run()
''')


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)],
                   check=True, timeout=10)
    return path


@pytest.fixture
def console_server(tmp_path):
    """start(mode, keys) -> port of a console served by a child process (killed on teardown)."""
    procs = []

    def start(mode: str, keys: Path | None) -> int:
        script = tmp_path / "console_server.py"
        script.write_text(SERVER)
        log = open(tmp_path / f"server-{len(procs)}.log", "wb")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.Popen([sys.executable, str(script), mode, str(keys), str(tmp_path / "state")],
                                stdout=subprocess.PIPE, stderr=log, env=env, cwd=tmp_path)
        procs.append((proc, log))
        out = Reader(proc.stdout)
        try:
            return int(out.wait_for(r"^(\d+)$", timeout=10).group(1))
        except AssertionError:
            proc.kill()
            raise AssertionError((tmp_path / f"server-{len(procs) - 1}.log").read_text()) from None

    yield start
    for proc, log in procs:
        proc.kill()
        proc.wait(timeout=5)
        log.close()


def ssh(port: int, key: Path, user: str = "admin") -> list[str]:
    return ["ssh", "-F", "/dev/null", "-tt", "-i", str(key), "-p", str(port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5", f"{user}@127.0.0.1"]


@needs_ssh
def test_ssh_console_runs_verbs_and_refuses_other_keys(tmp_path, console_server):
    key = keygen(tmp_path / "id_admin")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text("# the operator\n\nnot a key at all\n" + (tmp_path / "id_admin.pub").read_text())
    port = console_server("ssh", authorized)

    session = subprocess.Popen(ssh(port, key), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    try:
        out = Reader(session.stdout)
        out.wait_for(r">>> ")
        session.stdin.write(b"connections_start(5)\r")
        session.stdin.flush()
        out.wait_for(r"^requested\s+5$")
        session.stdin.write(b"count_connections()\r")
        session.stdin.flush()
        out.wait_for(r"^connections\s+5$")
        session.stdin.write(b"stats()\r")
        session.stdin.flush()
        # The Deferred's table arrives after the prompt, starting on its own line.
        out.wait_for(r"Deferred #0 called back: *\n\s+open\s+rtt_p50_ms\n"
                     r"client-a\s+5\s+0\.250\nclient-b\s+0\s+-$")
        session.stdin.write(b"help\r")
        session.stdin.flush()
        out.wait_for(r"^\s+count_connections\(\)\s+How many connections are open\.$")
        session.stdin.write(b"\x04")
        session.stdin.flush()
        assert session.wait(timeout=5) == 0, out.text()
    finally:
        if session.poll() is None:
            session.kill()
            session.wait(timeout=5)

    # Piped commands: the end of stdin ends the session, after the commands ran.
    piped = subprocess.run(ssh(port, key), input=b"connections_start(2)\rcount_connections()\r",
                           capture_output=True, timeout=10)
    assert piped.returncode == 0, piped
    assert re.search(r"^connections\s+7$", clean(piped.stdout), re.M), clean(piped.stdout)

    host_key = tmp_path / "state" / "console_host_key"
    assert stat.S_IMODE(host_key.stat().st_mode) == 0o600

    stranger = keygen(tmp_path / "id_stranger")
    refused = subprocess.run(ssh(port, stranger), input=b"", capture_output=True, timeout=10)
    assert refused.returncode != 0
    assert b"Permission denied" in refused.stderr
    # The right key for another user is refused too: only control.console_user may log in.
    other_user = subprocess.run(ssh(port, key, user="root"), input=b"", capture_output=True, timeout=10)
    assert other_user.returncode != 0
    assert b"Permission denied" in other_user.stderr


@needs_ssh
def test_an_http_post_to_the_console_runs_nothing(tmp_path, console_server):
    """The attack on the old telnet console: any local program (a web page's fetch()
    included) POSTs Python to the console port. Only SSH listens now: nothing runs."""
    keygen(tmp_path / "id_admin")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text((tmp_path / "id_admin.pub").read_text())
    port = console_server("ssh", authorized)
    marker = tmp_path / "pwned"
    body = f"open({str(marker)!r}, 'w').write('x')\r\n".encode()
    request = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received, deadline = b"", time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break  # the SSH server hung up on a client that is not speaking SSH
            received += chunk
    assert received.startswith(b"SSH-2.0-"), received[:80]
    assert not marker.exists()


@pytest.mark.parametrize("listen", ["tcp:8791:interface=127.0.0.1", "tcp:8791:interface=0.0.0.0"])
def test_telnet_console_is_gone(tmp_path, listen):
    control = ControlSettings(console="telnet", console_listen=listen)
    with pytest.raises(ConsoleError) as e:
        make_console(MemoryReactor(), control, {}, str(tmp_path))
    assert str(e.value) == TELNET_REMOVED and "\n" not in str(e.value)


def test_ssh_console_beyond_loopback_warns(tmp_path):
    from twisted.logger import globalLogPublisher

    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        control = ControlSettings(console_listen="tcp:8791:interface=0.0.0.0",
                                  console_keys=str(public_key_file(tmp_path / "authorized_keys")))
        assert make_console(MemoryReactor(), control, {}, str(tmp_path / "state")) is not None
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("reachable beyond loopback" in e.get("log_format", "") for e in events)


def public_key_file(path: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key()
    path.write_bytes(public.public_bytes(serialization.Encoding.OpenSSH,
                                         serialization.PublicFormat.OpenSSH) + b" someone\n")
    return path


def test_service_binds_given_endpoint_and_exposes_port(tmp_path):
    reactor = MemoryReactor()
    control = ControlSettings(console_listen="tcp:8791:interface=127.0.0.1",
                              console_keys=str(public_key_file(tmp_path / "authorized_keys")))
    svc = make_console(reactor, control, {}, str(tmp_path / "state"))
    assert isinstance(svc, ConsoleService)
    svc.privilegedStartService()
    svc.startService()
    port, factory, backlog, interface = reactor.tcpServers[0]
    assert (port, interface) == (8791, "127.0.0.1")
    assert len(reactor.tcpServers) == 1  # startService after privilegedStartService does not bind twice
    ports = []
    svc.when_listening().addCallback(ports.append)
    assert ports == [svc.port] and svc.port is not None
    svc.stopService()
    assert svc.port is None


def test_console_none():
    assert make_console(MemoryReactor(), ControlSettings(console="none"), {}, "/nonexistent") is None


def test_missing_keys_file(tmp_path):
    missing = tmp_path / "nope" / "authorized_keys"
    with pytest.raises(ConsoleError) as e:
        make_console(MemoryReactor(), ControlSettings(console_keys=str(missing)), {}, str(tmp_path))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"control.console_keys: {missing} does not exist; ")
    assert "control.console: none" in message
    assert not (tmp_path / "console_host_key").exists()  # nothing written for a failed start


def test_the_console_is_opt_in_with_its_own_keys_file(tmp_path, monkeypatch):
    # ~/.ssh/authorized_keys (the keys that open a shell on this host) opens no console.
    monkeypatch.setenv("HOME", str(tmp_path))
    public_key_file((tmp_path / ".ssh").mkdir() or tmp_path / ".ssh" / "authorized_keys")
    assert ControlSettings().console == "ssh" and ControlSettings().console_keys is None
    assert make_console(MemoryReactor(), ControlSettings(), {}, str(tmp_path)) is None


def test_keys_file_without_usable_key(tmp_path):
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text("# nothing here\n\nssh-ed25519 not-base64!!\n"
                         'from="10.0.0.1" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE4\n')
    with pytest.raises(ConsoleError) as e:
        make_console(MemoryReactor(), ControlSettings(console_keys=str(keys_file)), {}, str(tmp_path))
    assert "\n" not in str(e.value)
    assert f"no usable public key in {keys_file} (2 unusable lines skipped)" in str(e.value)


@needs_ssh
def test_host_key_generated_once(tmp_path):
    keygen(tmp_path / "id")
    control = ControlSettings(console_keys=str(tmp_path / "id.pub"))
    state = tmp_path / "state"
    first = make_console(MemoryReactor(), control, {}, str(state))
    host_key = state / "console_host_key"
    content = host_key.read_bytes()
    assert stat.S_IMODE(host_key.stat().st_mode) == 0o600
    second = make_console(MemoryReactor(), control, {}, str(state))
    assert host_key.read_bytes() == content
    assert first.factory.privateKeys == second.factory.privateKeys
    assert first.factory.publicKeys is not second.factory.publicKeys  # never the class-level dict


# ---------------------------------------------------------------- readable output (unit)

def test_wrap_namespace_readable_deferred_result():
    def stats():
        """Per-client statistics.

        More detail nobody reads in the listing.
        """
        return defer.succeed({"open": 12, "rtt_p99_ms": 1.5, "clients": ["a", "b"]})

    ns = wrap_namespace({"stats": stats, "answer": 42, "Readable": Readable})
    assert ns["answer"] == 42 and ns["Readable"] is Readable
    assert ns["stats"].__name__ == "stats" and "Per-client" in ns["stats"].__doc__
    results = []
    ns["stats"]().addCallback(results.append)
    [result] = results
    assert isinstance(result, Readable)
    assert repr(result) == "open        12\nrtt_p99_ms  1.500\nclients     a,b"
    assert result["open"] == 12 and result.value["clients"] == ["a", "b"]

    listing = repr(ns["help"])
    assert "  stats()  Per-client statistics." in listing
    assert "More detail" not in listing
    assert "More detail" in repr(ns["help"](ns["stats"]))


def test_readable_tables_and_passthrough():
    ns = wrap_namespace({
        "clients": lambda: {"a": {"host": "h1", "open": 5}, "bb": {"host": "h2", "open": 10, "down": True}},
        "rows": lambda: [{"x": 1}, {"x": 22, "y": "z"}],
        "count": lambda: 7,
        "nothing": lambda: None,
        "later": lambda: defer.Deferred(),
    })
    assert repr(ns["clients"]()) == ("    host  open  down\n"
                                     "a   h1       5  -\n"
                                     "bb  h2      10  True")
    assert repr(ns["rows"]()) == " x  y\n 1  -\n22  z"
    assert ns["count"]() == 7
    assert ns["nothing"]() is None
    pending = ns["later"]()
    got = []
    pending.addCallback(got.append)
    pending.callback(["one", "two"])
    assert repr(got[0]) == "one\ntwo"


class _Handler:
    def __init__(self) -> None:
        self.out: list[str] = []

    def addOutput(self, data, isAsync=None) -> None:
        self.out.append(data)


def test_interpreter_shows_deferred_results_readably():
    pending = defer.Deferred()
    ns = wrap_namespace({"fired": lambda: defer.succeed({"open": 3}),
                         "waiting": lambda: pending})
    handler = _Handler()
    interp = _ConsoleInterpreter(handler, ns)
    interp.push(b"fired()")
    assert handler.out == ["open  3"]  # the value, not "<Deferred at 0x... current result: ...>"
    handler.out.clear()
    interp.push(b"waiting()")
    assert handler.out == ["<Deferred #0>"]
    pending.callback({"a": 1, "b": 2})
    assert handler.out[-1] == "Deferred #0 called back: \na  1\nb  2"
    # The stock interpreter still works with the same namespace (no reliance on ours for basics).
    stock = _Handler()
    ManholeInterpreter(stock, ns).push(b"fired()")
    assert stock.out and stock.out[0].startswith("<Deferred at")
