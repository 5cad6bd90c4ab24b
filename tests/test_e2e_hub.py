"""The hub and an agent as real processes on loopback: re-registration after a
hub restart, a killed client worker replaced, the manhole console over a real
SSH client, and `connscale ctl` exit codes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.procs import connscale

pytestmark = pytest.mark.slow

needs_ssh = pytest.mark.skipif(not shutil.which("ssh") or not shutil.which("ssh-keygen"), reason="openssh-client missing")


def test_agent_registers_again_after_hub_restart_and_target_is_restored(hub):
    h = hub()
    h.start()
    with h.agent("a1") as agent:
        assert h.load(agent, "a1", 1500).stdout.strip() == "target 1500"
        h.wait_count(1500)
        h.proc.stop()
        assert agent.running()
        h.start()
        agent.wait_for(lambda: agent.text().count("registered with controller") >= 2, 60, "second registration")
        # The restarted hub adopted the agent's target and re-opened what the restart cut.
        h.wait_count(1500, "a1", timeout=90)
        h.wait_count(1500, timeout=30)
        clients = h.ctl("clients").stdout
        assert re.search(r"^a1\s+True\s+\S+\s+\d+\s+1500\s+1500$", clients, re.M), clients
        failures = h.stats()["client"]["failures"]
        assert set(failures) <= {"steady:closed_by_peer", "steady:ECONNRESET", "first_ping:closed_by_peer",
                                 "first_ping:ECONNRESET", "connect:ECONNREFUSED",
                                 # a connect caught in a closing listener's queue is reset
                                 "connect:ECONNRESET"}, failures
    assert agent.popen.returncode is not None


def test_killed_client_worker_is_reported_and_replaced(hub):
    h = hub()
    h.start()
    with h.agent("a1", "--workers", "2") as agent:
        h.load(agent, "a1", 1000)
        workers = h.stats()["clients"]["a1"]["workers"]
        assert len(workers) == 2 and all(w["alive"] for w in workers)
        victim = workers[0]
        assert victim["open"] > 0
        os.kill(victim["pid"], signal.SIGKILL)  # a pid our agent started
        agent.wait_line("connections lost with it; restarting", 20)
        # ... and the hub records it as an event of the run.
        h.proc.wait_line("agent a1: a1-client-worker-1", 20)
        # The replacement takes over the slot's share and reconnects it.
        h.wait_count(1000, "a1", timeout=60)
        after = h.stats()["clients"]["a1"]
        pids = [w["pid"] for w in after["workers"]]
        assert victim["pid"] not in pids and all(w["alive"] for w in after["workers"])
        assert after["workers"][0]["restarts"] == 1
        assert after["failures"].get("steady:worker_lost") == victim["open"] or \
            after["failures"].get("first_ping:worker_lost", 0) + after["failures"].get("steady:worker_lost", 0) > 0


def test_ctl_exit_codes(hub, tmp_path):
    h = hub()
    r = h.ctl("count")
    assert r.returncode == 2 and "no control secret" in r.stderr  # no hub has written one yet
    h.start()
    r = h.ctl("start", "10", "--client", "nobody")
    assert r.returncode == 1 and "no connected agent named 'nobody'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    env_wrong = dict(os.environ, **h.env, CONNSCALE_SECRET="not-the-secret-of-this-hub")
    r = subprocess.run(connscale("ctl", "--config", str(h.config), "count"), capture_output=True, text=True,
                       env=env_wrong, timeout=30)
    assert r.returncode == 4 and "wrong control secret" in r.stderr
    assert h.ctl("count").stdout.strip() == "0"
    h.proc.stop()
    r = h.ctl("count")
    assert r.returncode == 3 and "cannot reach the controller" in r.stderr


@needs_ssh
def test_console_over_real_ssh_scales_a_client(hub, tmp_path):
    key = tmp_path / "id_admin"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=10)
    keys = tmp_path / "authorized_keys"
    keys.write_text((tmp_path / "id_admin.pub").read_text())
    h = hub(console="ssh", keys=keys)
    h.start()
    h.proc.wait_line("console", 10)
    with h.agent("a1") as agent:
        agent.wait_line("registered with controller", 30)
        argv = ["ssh", "-F", "/dev/null", "-tt", "-i", str(key), "-p", str(h.console_port),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "admin@127.0.0.1"]
        session = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        from tests.support.console import Reader

        try:
            out = Reader(session.stdout)
            out.wait_for(r">>> ", 15)

            def say(line: str, expect: str, timeout: float = 20) -> None:
                session.stdin.write(line.encode() + b"\r")
                session.stdin.flush()
                out.wait_for(expect, timeout)

            say("connections_start(300, 'a1')", r"called back: 300")
            h.wait_count(300, "a1")
            say("count_connections('a1')", r"called back: 300")
            say("connections_stop(100, 'a1')", r"called back: 200")
            h.wait_count(200, "a1")
            say("clients()", r"a1", 10)
            say("stats()", r"client\s+a1: connected target=200 open=200", 20)
            session.stdin.write(b"\x04")
            session.stdin.flush()
            session.wait(timeout=10)
        finally:
            if session.poll() is None:
                session.kill()
                session.wait(timeout=5)


def make_tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a hub certificate for 127.0.0.1 signed by it."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connscale test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.pem", tmp / "hub.crt", tmp / "hub.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_control_plane_over_tls(hub, tmp_path):
    ca, crt, key = make_tls_files(tmp_path)
    h = hub()
    text = h.config.read_text().replace(
        f"listen: tcp:{h.control}:interface=127.0.0.1",
        f"listen: ssl:{h.control}:privateKey={key}:certKey={crt}:interface=127.0.0.1\n  tls_ca: {ca}",
    )
    h.config.write_text(text)
    h.start()
    with h.agent("a1") as agent:
        h.load(agent, "a1", 50)
    # A client that does not trust the hub's certificate is refused.
    plain = tmp_path / "untrusting.yaml"
    other_ca = make_tls_files(tmp_path / "other" if (tmp_path / "other").mkdir() is None else tmp_path)[0]
    plain.write_text(text.replace(f"tls_ca: {ca}", f"tls_ca: {other_ca}"))
    r = subprocess.run(connscale("ctl", "--config", str(plain), "count"), capture_output=True, text=True,
                       env=dict(os.environ, **h.env), timeout=30)
    assert r.returncode == 3, r.stderr


def test_second_agent_with_a_taken_name_exits_with_the_reason(hub):
    h = hub()
    h.start()
    with h.agent("a1") as first:
        first.wait_line("registered with controller", 30)
        second = h.agent("a1")
        try:
            second.wait_for(lambda: not second.running(), 30, "the second agent to exit")
            assert second.popen.returncode == 2
            assert "agent name 'a1' is taken by pid" in second.text()
        finally:
            second.stop()
        assert first.running()
        assert re.search(r"^a1\s+True", h.ctl("clients").stdout, re.M)
