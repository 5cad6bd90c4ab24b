"""A real, throw-away OpenSSH server for tests.

Usage::

    from tests.support.sshd import Sshd, sshd_or_skip, remote_python

    @pytest.fixture
    def sshd():
        with sshd_or_skip() as server:     # skips if sshd/root unavailable
            yield server

    def test_x(sshd):
        out = subprocess.run(sshd.ssh_argv("echo hi"), capture_output=True,
                             text=True, stdin=subprocess.DEVNULL, timeout=10)

Inside a network namespace (see ``tests/support/netns.py``)::

    with TestNetwork(2) as net, Sshd(netns=net.hosts[1]) as server:
        net.hosts[0].run(server.ssh_argv("true"))   # ssh from h1 -> sshd in h2

The remote environment
----------------------
sshd does not forward the caller's environment (``PermitUserEnvironment no``
and no ``AcceptEnv``).  Remote commands run through root's login shell with
sshd's compiled-in default PATH (on Debian, for root:
``/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``).  Debian's
bash additionally sources ``~/.bashrc`` for ssh commands, so whatever that
file does (pyenv shims, ...) may or may not be there: do not rely on it.
Never run a bare ``python3`` remotely; use :data:`remote_python` (the
absolute path of the interpreter running the tests, which has the project's
dependencies installed) and pass ``cwd``/``PYTHONPATH`` explicitly, e.g. with
:func:`remote_command`::

    cmd = remote_command([remote_python, "-m", "connscale.control.agent"],
                         cwd="/work/main", env={"PYTHONPATH": "/work/main"})
    subprocess.run(server.ssh_argv(cmd), ...)

Other notes
-----------
* The server is started with ``sshd -D -e``: it does not daemonize and logs
  (LogLevel VERBOSE) to ``<tmpdir>/sshd.log`` (see :meth:`Sshd.log`).
* :meth:`Sshd.stop` kills only processes it started: the sshd pid, the
  per-connection sshd children forked from it (found via /proc by ppid,
  because sshd's connection children call setsid() and leave its group),
  and remote commands that outlived their connection (without a pty a
  client disconnect does not kill them; they are reparented to init and
  found by the ``CONNSCALE_TEST_SSHD=<tag>`` variable sshd sets in every
  session via ``SetEnv``).
* ``/run/sshd`` (the privilege separation directory) is created if missing.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterable, Mapping, Sequence

SSHD_BIN = "/usr/sbin/sshd"
SSH_BIN = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN_BIN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
IP_BIN = shutil.which("ip") or "/usr/sbin/ip"
PRIVSEP_DIR = "/run/sshd"
#: Environment variable sshd sets in each remote session (see Sshd.tag).
TAG_ENV = "CONNSCALE_TEST_SSHD"

#: Absolute path of the interpreter running the tests.  Use it for remote
#: python commands: the remote PATH is minimal and does not know about
#: pyenv/venvs.  The filesystem is shared (also across network namespaces).
remote_python: str = sys.executable


def remote_command(argv: Sequence[str], cwd: str | None = None,
                   env: Mapping[str, str] | None = None) -> str:
    """Quote ``argv`` into one remote shell command string.

    ssh joins its arguments with spaces and hands them to the remote login
    shell, so a list must be quoted exactly once.  Optionally ``cd`` first
    and set environment variables (sshd passes none of ours)."""
    parts = []
    if cwd is not None:
        parts.append("cd %s &&" % shlex.quote(cwd))
    parts.append("exec")
    if env:
        parts.append("env")
        parts.extend(shlex.quote("%s=%s" % (k, v)) for k, v in env.items())
    parts.extend(shlex.quote(str(a)) for a in argv)
    return " ".join(parts)


def sshd_unavailable_reason() -> str | None:
    """Why a test sshd cannot run here, or None if it can."""
    if not os.path.exists(SSHD_BIN):
        return "%s not found (apt-get install openssh-server)" % SSHD_BIN
    if not os.path.exists(SSH_BIN):
        return "ssh client not found (apt-get install openssh-client)"
    if not os.path.exists(SSH_KEYGEN_BIN):
        return "ssh-keygen not found (apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "test sshd needs root (privilege separation, root login)"
    return None


def sshd_or_skip(**kwargs) -> "Sshd":
    """Return an (unstarted) :class:`Sshd`, or ``pytest.skip`` with a reason.

    Use as ``with sshd_or_skip() as server: ...`` inside a fixture."""
    reason = sshd_unavailable_reason()
    if reason is not None:
        import pytest
        pytest.skip(reason)
    return Sshd(**kwargs)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                data = f.read()
        except OSError:
            continue
        # comm may contain spaces/parens: ppid is the 2nd field after ')'.
        fields = data[data.rfind(b")") + 2:].split()
        try:
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (IndexError, ValueError):
            continue
    return children


def descendants(pid: int) -> list[int]:
    """All live descendant pids of ``pid`` (by ppid, via /proc)."""
    children = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def tagged_pids(tag: str) -> list[int]:
    """Pids whose initial environment has ``CONNSCALE_TEST_SSHD=<tag>``."""
    needle = ("%s=%s" % (TAG_ENV, tag)).encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            out.append(int(entry))
    return out


def _kill_pids(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _pids_alive(pids: Iterable[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != b"Z":
            alive.append(pid)
    return alive


class _InTmpdir:
    """An attribute of an `Sshd`: the path of one of its files, in its tmpdir once started."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, server: "Sshd", owner: type | None = None) -> str:
        return server._p(self.name)


class SshdError(RuntimeError):
    pass


class Sshd:
    """A real ``/usr/sbin/sshd -D -e -f <config>`` in a private tmp dir.

    :param host: ListenAddress, and the address clients connect to.
        Defaults to ``netns.ip`` if ``netns`` is a Host object, else
        ``127.0.0.1``.  ``0.0.0.0`` listens everywhere; clients then use
        ``netns.ip``/127.0.0.1.
    :param port: fixed port, or None to pick a free one (retried if the
        chosen port turns out to be taken).
    :param netns: run sshd inside this network namespace (``ip netns exec``):
        a namespace name or an object with an ``ns`` attribute (netns.Host).
    :param extra_config: sshd_config keywords overriding/adding to ours.
    :param verify: after start, run a real ``ssh ... true`` (from inside
        ``netns`` if given).
    """

    user = "root"

    def __init__(self, host: str | None = None, port: int | None = None,
                 netns=None, extra_config: Mapping[str, str] | None = None,
                 verify: bool = True, startup_timeout: float = 10.0):
        if netns is not None and not isinstance(netns, str):
            if host is None:
                host = getattr(netns, "ip", None)
            netns = netns.ns
        self.netns: str | None = netns
        self.listen_address: str = host or "127.0.0.1"
        if self.listen_address in ("0.0.0.0", "::"):
            self.host = "127.0.0.1"
        else:
            self.host = self.listen_address
        self._fixed_port = port
        self.port: int | None = port
        self.extra_config = dict(extra_config or {})
        self.verify = verify
        self.startup_timeout = startup_timeout
        self.tmpdir: str | None = None
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        #: Set (via sshd_config SetEnv) in the environment of every remote
        #: session; stop() uses it to find session processes that outlived
        #: their connection (reparented to init, so not descendants).
        self.tag = "%d-%s" % (os.getpid(), os.urandom(6).hex())

    # -- paths -------------------------------------------------------------
    def _p(self, name: str) -> str:
        assert self.tmpdir is not None, "Sshd not started"
        return os.path.join(self.tmpdir, name)

    client_key = _InTmpdir("client_ed25519")
    client_pubkey = _InTmpdir("client_ed25519.pub")
    host_key = _InTmpdir("ssh_host_ed25519_key")
    config_path = _InTmpdir("sshd_config")
    log_path = _InTmpdir("sshd.log")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log(self) -> str:
        """The sshd log so far (stderr, LogLevel VERBOSE)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    # -- client side -----------------------------------------------------------
    def ssh_options(self, key: str | None = None) -> list[str]:
        """ssh client options (everything but destination and command).

        ``-F /dev/null`` ignores ~/.ssh/config and /etc/ssh/ssh_config;
        BatchMode makes auth failures fail fast instead of prompting."""
        assert self.port is not None, "Sshd not started"
        return [
            "-F", "/dev/null",
            "-i", key or self.client_key,
            "-p", str(self.port),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "PasswordAuthentication=no",
            "-o", "KbdInteractiveAuthentication=no",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5",
        ]

    @property
    def destination(self) -> str:
        return "%s@%s" % (self.user, self.host)

    def ssh_argv(self, command: str, key: str | None = None) -> list[str]:
        """``ssh <options> root@host <command>``.  ``command`` is one remote
        shell string (see :func:`remote_command` to quote an argv).  If the
        server runs in a netns, run this argv from a namespace that can reach
        it (e.g. ``other_host.run(server.ssh_argv(...))``)."""
        return [SSH_BIN, *self.ssh_options(key=key), self.destination, command]

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> "Sshd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _netns_prefix(self) -> list[str]:
        return [IP_BIN, "netns", "exec", self.netns] if self.netns else []

    def _config_text(self) -> str:
        opts: dict[str, str] = {
            "ListenAddress": self.listen_address,
            "Port": str(self.port),
            "HostKey": self.host_key,
            "AuthorizedKeysFile": self._p("authorized_keys"),
            "PidFile": self._p("sshd.pid"),
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PubkeyAuthentication": "yes",
            "PermitRootLogin": "prohibit-password",
            "StrictModes": "no",
            "UsePAM": "no",
            "PermitUserEnvironment": "no",
            "LogLevel": "VERBOSE",
            "UseDNS": "no",
            "PrintMotd": "no",
            "PrintLastLog": "no",
            "X11Forwarding": "no",
            # Connection-scale tests open many concurrent sessions; the
            # defaults (10:30:100, 10) would randomly drop them.
            "MaxStartups": "1000",
            "MaxSessions": "1000",
            "Subsystem": "sftp internal-sftp",
            "SetEnv": "%s=%s" % (TAG_ENV, self.tag),
        }
        opts.update(self.extra_config)
        # No AcceptEnv line at all: no client environment is accepted.
        return "".join("%s %s\n" % kv for kv in opts.items())

    def _keygen(self, path: str, comment: str) -> None:
        subprocess.run([SSH_KEYGEN_BIN, "-q", "-t", "ed25519", "-N", "",
                        "-C", comment, "-f", path],
                       check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _pick_port(self) -> int:
        if self._fixed_port is not None:
            return self._fixed_port
        if self.netns is None:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((self.listen_address, 0))
                    return s.getsockname()[1]
            except OSError:
                pass
        # Inside a namespace we cannot probe from here; any port is very
        # likely free there, and a collision is retried.
        return random.randint(20000, 29999)

    def start(self) -> "Sshd":
        if self.proc is not None:
            raise SshdError("already started")
        reason = sshd_unavailable_reason()
        if reason:
            raise SshdError(reason)
        if not os.path.isdir(PRIVSEP_DIR):
            os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
        self.tmpdir = tempfile.mkdtemp(prefix="cs-sshd-")
        try:
            self._keygen(self.host_key, "cs-test-host")
            self._keygen(self.client_key, "cs-test-client")
            shutil.copyfile(self.client_pubkey, self._p("authorized_keys"))
            attempts = 1 if self._fixed_port is not None else 5
            for attempt in range(attempts):
                self.port = self._pick_port()
                with open(self.config_path, "w") as f:
                    f.write(self._config_text())
                if self._launch_and_wait(last=attempt == attempts - 1):
                    break
            if self.verify:
                self._verify()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch_and_wait(self, last: bool) -> bool:
        """Start sshd; True once it listens, False on a port collision."""
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self._netns_prefix() + [SSHD_BIN, "-D", "-e", "-f",
                                    self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = self.log()
                self._reap()
                if not last and ("Address already in use" in log
                                 or "Cannot bind any address" in log):
                    return False
                raise SshdError("sshd exited with %s:\n%s"
                                % (self.proc.returncode, log))
            # sshd logs this right after listen(): the port now accepts
            # connections (in the root ns or inside the netns alike).  No
            # TCP probe: it would leave a transient child and log noise.
            if "Server listening on" in self.log():
                return True
            time.sleep(0.02)
        raise SshdError("sshd did not listen on %s:%s within %ss:\n%s"
                        % (self.host, self.port, self.startup_timeout,
                           self.log()))

    def _verify(self) -> None:
        argv = self._netns_prefix() + self.ssh_argv("true")
        deadline = time.monotonic() + self.startup_timeout
        while True:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True,
                               timeout=self.startup_timeout,
                               start_new_session=True)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SshdError("ssh verification failed (rc=%s): %s\n"
                                "sshd log:\n%s"
                                % (r.returncode, r.stderr.strip(), self.log()))
            time.sleep(0.1)

    def _reap(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self) -> None:
        """Kill the sshd we started (by pid) and its connection children,
        wait for them, and remove the tmp dir.  Idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                kids = descendants(proc.pid)
                _kill_pids([proc.pid], signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _kill_pids([proc.pid], signal.SIGKILL)
                    proc.wait(timeout=5)
            else:
                kids = []
                proc.wait()
            # Connection children, plus remote commands that outlived their
            # connection (no pty: a client disconnect does not kill them).
            kids = sorted(set(kids) | set(tagged_pids(self.tag)))
            _kill_pids(kids, signal.SIGTERM)
            deadline = time.monotonic() + 3
            while _pids_alive(kids) and time.monotonic() < deadline:
                time.sleep(0.02)
            _kill_pids(_pids_alive(kids), signal.SIGKILL)
        self._reap()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __repr__(self) -> str:
        return "<Sshd %s:%s pid=%s netns=%s>" % (self.host, self.port,
                                                 self.pid, self.netns)
