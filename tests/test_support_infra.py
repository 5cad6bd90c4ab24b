"""Tests of the test infrastructure itself: tests/support/{sshd,netns}.py."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.netns import (
    IP_BIN,
    NetnsError,
    TestNetwork,
    list_namespaces,
    netns_available,
)
from tests.support.sshd import (
    Sshd,
    descendants,
    remote_command,
    remote_python,
    sshd_unavailable_reason,
    tagged_pids,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

needs_netns = pytest.mark.skipif(
    not netns_available(), reason="needs root and working `ip netns`/veth/bridge")
needs_sshd = pytest.mark.skipif(
    sshd_unavailable_reason() is not None,
    reason=str(sshd_unavailable_reason()))

RUN = dict(capture_output=True, text=True, stdin=subprocess.DEVNULL,
           timeout=15)


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def net2():
    with TestNetwork(2) as net:
        yield net
    assert not set(net.namespaces) & set(list_namespaces())


# -- sshd -----------------------------------------------------------------------

def test_sshd_echo(sshd):
    r = subprocess.run(sshd.ssh_argv("echo hi"), **RUN)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hi\n"
    assert sshd.user == "root" and sshd.host == "127.0.0.1"
    assert os.path.exists(sshd.client_key) and os.path.exists(sshd.client_pubkey)
    assert "-i" in sshd.ssh_options() and str(sshd.port) in sshd.ssh_options()


def test_sshd_remote_python_and_env(sshd):
    cmd = remote_command(
        [remote_python, "-c",
         "import os,sys; print(os.getcwd(), os.environ.get('X'), "
         "os.environ.get('LEAK'))"],
        cwd="/tmp", env={"X": "a b'c"})
    env = dict(os.environ, LEAK="nope", LC_LEAK="nope")
    r = subprocess.run(sshd.ssh_argv(cmd), env=env, **RUN)
    assert r.returncode == 0, r.stderr
    # our environment is not forwarded (no AcceptEnv)
    assert r.stdout == "/tmp a b'c None\n"


def test_sshd_wrong_key_fails_without_prompt(sshd, tmp_path):
    bad = str(tmp_path / "wrong")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", bad],
                   check=True, **RUN)
    t0 = time.monotonic()
    r = subprocess.run(sshd.ssh_argv("echo hi", key=bad),
                       start_new_session=True, **RUN)
    assert r.returncode == 255
    assert r.stdout == ""
    assert "Permission denied" in r.stderr
    assert time.monotonic() - t0 < 10


@needs_sshd
def test_sshd_stop_kills_only_its_processes():
    server = Sshd().start()
    clients = []
    try:
        # two sessions; the second client goes away first, orphaning its
        # remote command (no pty => no SIGHUP), which stop() must still kill
        for _ in range(2):
            c = subprocess.Popen(server.ssh_argv("echo up; exec sleep 30"),
                                 stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            clients.append(c)
            line = c.stdout.readline()
            assert line == "up\n", (c.poll(), server.log())
        pid, kids = server.pid, descendants(server.pid)
        assert kids, server.log()
        remote = tagged_pids(server.tag)
        assert len(remote) == 2, remote     # the two remote `sleep`s
        clients[1].kill()
        clients[1].wait()
        tmpdir = server.tmpdir
        unrelated = subprocess.Popen(["sleep", "30"])  # must survive
        server.stop()
        assert not _alive(pid)
        deadline = time.monotonic() + 5
        while (any(_alive(k) for k in kids + remote)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        assert not [k for k in kids + remote if _alive(k)]
        assert unrelated.poll() is None
        assert not os.path.exists(tmpdir)
        assert clients[0].wait(timeout=10) != 0  # session died with server
    finally:
        for c in clients:
            c.kill()
            c.communicate()
        if "unrelated" in locals():
            unrelated.kill()
            unrelated.wait()
        server.stop()


# -- network namespaces -------------------------------------------------------------

@needs_netns
def test_network_layout(net2):
    h1, h2 = net2.hosts
    assert (h1.name, h1.ip, h2.name, h2.ip) == ("h1", "198.18.0.1",
                                                 "h2", "198.18.0.2")
    assert set(net2.namespaces) <= set(list_namespaces())
    for h in net2.hosts:
        r = h.run(["ip", "-o", "addr", "show", "dev", "eth0"], **RUN)
        assert "inet %s/24" % h.ip in r.stdout
        r = h.run(["ip", "-o", "link", "show", "lo"], **RUN)
        assert "UP" in r.stdout
        assert h.run(["ip", "route", "show", "default"], **RUN).stdout == ""
        r = h.run(["sysctl", "-n", "net.ipv4.ip_local_port_range",
                   "net.core.somaxconn"], **RUN)
        assert r.stdout.split() == ["10000", "65000", "65535"]
    r = subprocess.run([IP_BIN, "-n", net2.bridge_ns, "-o", "addr"], **RUN)
    assert "198.18" not in r.stdout
    r = subprocess.run([IP_BIN, "-n", net2.bridge_ns, "route", "show",
                        "table", "all"], **RUN)
    assert "198.18" not in r.stdout and "default" not in r.stdout


@needs_netns
def test_root_namespace_untouched(net2):
    for cmd in (["-o", "addr"], ["route", "show", "table", "all"],
                ["-o", "link"], ["neigh"]):
        out = subprocess.run([IP_BIN, *cmd], **RUN).stdout
        assert "198.18" not in out, out
        assert net2.prefix not in out, out
    # No connected/specific route into the test net from the root ns:
    # either no route at all, or (at most) the machine's own default route.
    r = subprocess.run([IP_BIN, "route", "get", "198.18.0.2"], **RUN)
    if r.returncode == 0:
        assert " via " in r.stdout and "dev v" not in r.stdout, r.stdout


@needs_netns
def test_hosts_reach_each_other_tcp(net2):
    h1, h2 = net2.hosts
    server = h2.popen(
        [sys.executable, "-c",
         "import socket,sys\n"
         "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
         "s.bind(('%s',7777)); s.listen(); print('ready',flush=True)\n"
         "c,a=s.accept(); c.sendall(('from %%s' %% a[0]).encode()); c.close()"
         % h2.ip],
        stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline() == "ready\n"
    r = h1.run([sys.executable, "-c",
                "import socket; c=socket.create_connection(('%s',7777),5);"
                "print(c.recv(100).decode())" % h2.ip], **RUN)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "from %s\n" % h1.ip
    assert server.wait(timeout=5) == 0


@needs_netns
@pytest.mark.skipif(shutil.which("ping") is None, reason="no ping binary")
def test_hosts_ping(net2):
    h1, h2 = net2.hosts
    # Up to 3 tries: the first echo also waits for ARP on a veth that has just come up.
    r = h1.run(["ping", "-c3", "-i0.2", "-W2", h2.ip], **RUN)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_netns
def test_add_address_and_source_ip(net2):
    h1, h2 = net2.hosts
    src = h1.add_address("198.18.1.7")
    h2.add_address("198.18.1.8")
    assert h1.addresses == [h1.ip, src]
    r = h1.run([sys.executable, "-c",
                "import socket; s=socket.socket(); s.bind(('%s',0)); "
                "s.settimeout(5); s.connect_ex(('198.18.1.8',1)) ; "
                "print(s.getsockname()[0])" % src], **RUN)
    assert r.stdout.strip() == src, r.stderr
    with pytest.raises(ValueError):
        h1.add_address("10.0.0.1")
    with pytest.raises(ValueError):
        TestNetwork(2, subnet="192.168.0.0/24")


@needs_netns
def test_network_cleanup_kills_processes_and_namespaces():
    with TestNetwork(1) as net:
        proc = net.hosts[0].popen(["sleep", "60"])
        # a process we did not track (grandchild) is also removed
        net.hosts[0].run(["sh", "-c", "sleep 60 >/dev/null 2>&1 &"], **RUN)
        names = list(net.namespaces)
        assert len(names) == 2
    assert proc.poll() is not None
    assert not set(names) & set(list_namespaces())


@needs_netns
def test_network_cleanup_on_setup_failure(monkeypatch):
    net = TestNetwork(2)

    def boom(*a, **k):
        raise NetnsError("injected")
    monkeypatch.setattr(net, "_setup", lambda: (net._add_ns(net.bridge_ns),
                                                boom()))
    with pytest.raises(NetnsError, match="injected"):
        with net:
            pass
    assert net.bridge_ns not in list_namespaces()


@needs_netns
@needs_sshd
def test_sshd_in_namespace_reachable_from_other_host(net2):
    h1, h2 = net2.hosts
    with Sshd(netns=h2) as server:
        assert server.host == h2.ip and server.netns == h2.ns
        r = h1.run(server.ssh_argv("echo hi; cat /proc/net/dev | grep -c eth0"),
                   **RUN)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hi\n1\n"
        r = h1.run(server.ssh_argv(remote_command(
            [remote_python, "-c",
             "import os; print(os.environ['SSH_CONNECTION'].split()[0])"])),
            **RUN)
        assert r.stdout == "%s\n" % h1.ip, r.stderr
        # NB: do not probe h2.ip from the root namespace: it has no route
        # into the test net, so such a connect would leave via the machine's
        # default route (see test_root_namespace_untouched).
        pid = server.pid
    assert not _alive(pid)


def test_free_ports_never_hands_out_a_port_twice(monkeypatch):
    # Probed-free is not reserved: a hub's control port once came out equal to
    # its server port picked a line earlier. Force the collision with a pool of 3.
    from tests.support import procs

    monkeypatch.setattr(procs, "PORT_POOL", range(21000, 21003))
    monkeypatch.setattr(procs, "_given", set())
    got = [procs.free_port() for _ in range(3)]
    assert sorted(got) == [21000, 21001, 21002]
    with pytest.raises(RuntimeError):
        procs.free_port()


def test_each_xdist_worker_probes_its_own_slice_of_the_port_pool(monkeypatch):
    # Two test processes probing the same pool at once could both find one port free.
    from tests.support.procs import _worker_pool

    pool = range(20000, 32000)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert _worker_pool(pool) == pool
    slices = []
    for worker in ("gw0", "gw1"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
        slices.append(_worker_pool(pool))
    assert slices == [range(20000, 26000), range(26000, 32000)]


ALONE_TESTS = '''
import os, time, pytest

def mark(name, what):
    with open(os.environ["TIMES"], "a") as f:
        f.write(f"{name} {what} {time.monotonic()}\\n")

@pytest.mark.alone
def test_alone():
    mark("alone", "start"); time.sleep(1.0); mark("alone", "end")

@pytest.mark.parametrize("i", range(6))
def test_beside(i):
    mark(f"beside{i}", "start"); time.sleep(0.3); mark(f"beside{i}", "end")
'''


@pytest.mark.slow
def test_an_alone_test_runs_with_no_other_test_beside_it(tmp_path):
    # The memory tables compare whole-host kernel counters with the test's own reading: under
    # `pytest -n 2` no other test may open sockets meanwhile (tests/conftest.py's lock).
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["tests.conftest"]\n')
    (tmp_path / "test_alone.py").write_text(ALONE_TESTS)
    times = tmp_path / "times"
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TIMES=str(times), PYTHONPATH=str(root))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    spans: dict[str, dict[str, float]] = {}
    for line in times.read_text().splitlines():
        name, what, at = line.split()
        spans.setdefault(name, {})[what] = float(at)
    alone = spans.pop("alone")
    assert len(spans) == 6
    for name, span in spans.items():
        assert span["end"] <= alone["start"] or span["start"] >= alone["end"], (name, span, alone)
