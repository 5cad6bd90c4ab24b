"""Start a connscale agent on another machine through the system's ``ssh``.

This is the analogue of Erlang's slave start: the hub runs ``ssh host python3 -m connscale
agent ...`` and keeps that ssh process as the agent's *lifeline*. We use the system ssh
rather than conch so that the user's keys, agent, ``~/.ssh/config``, ProxyJump and
known_hosts all just work.

The lifeline: the shared secret is written to ssh's stdin (the agent reads it with
``--secret-file /dev/stdin``) and stdin then stays open. Without a tty, sshd gives the
remote command plain pipes, so when we close ssh's stdin, or ssh dies, or the hub dies
(the kernel closes our end of the pipe), the remote command reads EOF on its stdin and
``--lifeline`` makes it exit. Nothing else tells it: sshd sends no SIGHUP to a tty-less
command.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import shutil
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from connscale.config.settings import ClientHost

__all__ = [
    "LaunchError", "LaunchedAgent", "explain_failure", "launch", "remote_agent_argv", "remote_command",
    "ssh_argv",
]

log = Logger(namespace="connscale.launch")

#: Our defaults, placed *after* ``host.ssh_options``: for every ssh option the first value
#: given wins (ssh_config(5)), so the user's options must come first to override ours.
SSH_DEFAULT_OPTIONS: tuple[str, ...] = (
    "-o", "BatchMode=yes",          # never prompt: a hub has nobody to answer
    "-o", "ConnectTimeout=10",
    # A dead network kills ssh within ~15 s, which closes the lifeline.
    "-o", "ServerAliveInterval=5",
    "-o", "ServerAliveCountMax=3",
)

STDERR_TAIL_LINES = 20
_MAX_LINE = 64 * 1024          # a line longer than this is passed on in pieces
_PIPE_LINGER = 2.0             # see LaunchedAgent.processExited

# Put ssh in its own session before exec'ing it (same pid): a Ctrl-C on the hub's terminal
# must reach the hub only, which then stops its agents in order, instead of killing every
# ssh at once and with it every agent's lifeline. Python ignores SIGPIPE/SIGXFSZ and
# ignored dispositions survive exec, so restore them for ssh.
_SETSID_EXEC = (
    "import os, signal, sys\n"
    "for s in (signal.SIGPIPE, signal.SIGXFSZ):\n"
    "    signal.signal(s, signal.SIG_DFL)\n"
    "try:\n"
    "    os.setsid()\n"
    "except OSError:\n"
    "    pass\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


class LaunchError(Exception):
    """Launching could not even start (no ssh client, spawn failed); the message is one line."""


def remote_agent_argv(host: ClientHost, master: str, extra: Sequence[str] = ()) -> list[str]:
    """The agent command line to run on ``host`` (``host.env`` is applied by :func:`ssh_argv`)."""
    argv = [
        host.python, "-m", "connscale", "agent",
        "--master", master,
        "--name", host.name,
        "--secret-file", "/dev/stdin",
        "--lifeline",
    ]
    if host.source_ips:
        argv += ["--source-ip", ",".join(host.source_ips)]
    argv += ["--workers", str(host.workers)]
    argv += list(extra)
    return argv


def remote_command(host: ClientHost, remote: Sequence[str]) -> str:
    """The one string ssh hands to the remote login shell (a POSIX shell is assumed)."""
    if not remote:
        raise ValueError("empty remote command")
    # sshd forwards none of our environment (no AcceptEnv by default), hence `env K=V`.
    prefix = ["env", *(f"{k}={v}" for k, v in host.env.items())] if host.env else []
    return shlex.join([*prefix, *remote])


def _destination(host: ClientHost) -> str:
    # No user: let ssh choose (its User option, else the current user).
    return f"{host.user}@{host.host}" if host.user else host.host


def ssh_argv(host: ClientHost, remote: Sequence[str], ssh: str = "ssh") -> list[str]:
    """``ssh`` argv running ``remote`` (an argv, quoted here exactly once) on ``host``.

    ``host.ssh_options`` come first so they can override our defaults and ``-p``.
    ``--`` keeps a remote command from being read as ssh options (ssh parses options
    again after the destination).
    """
    return [
        ssh,
        *host.ssh_options,
        *SSH_DEFAULT_OPTIONS,
        "-p", str(host.port),
        _destination(host),
        "--",
        remote_command(host, remote),
    ]


def _exit_code(reason: Failure) -> int:
    # subprocess' convention: a negative code is the signal that killed ssh.
    value = reason.value
    code = getattr(value, "exitCode", None)
    if code is not None:
        return int(code)
    sig = getattr(value, "signal", None)
    return -int(sig) if sig else -1


class LaunchedAgent(ProcessProtocol):
    """One local ``ssh`` process running a remote agent; see the module docstring."""

    def __init__(self, reactor: Any, host: ClientHost, on_line: Callable[[str], None],
                 stdin_data: bytes = b"") -> None:
        self.reactor = reactor
        self.host = host
        self.argv: list[str] = []
        self.pid: int | None = None
        #: Fires with ssh's exit code (negative: killed by that signal); never errbacks.
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.exit_code: int | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._on_line = on_line
        self._stdin_data = stdin_data
        self._partial = {1: b"", 2: b""}
        self._stop_waiters: list[defer.Deferred[None]] = []
        self._timers: list[Any] = []
        self._stopping = False

    @classmethod
    def launch(cls, reactor: Any, host: ClientHost, remote_argv: Sequence[str], stdin_data: bytes,
               on_line: Callable[[str], None], ssh: str = "ssh", *,
               new_session: bool = True) -> "LaunchedAgent":
        """Spawn ssh running ``remote_argv`` on ``host``; ``stdin_data`` goes to its stdin,
        which then stays open as the lifeline. Raises :class:`LaunchError`."""
        exe = shutil.which(ssh)
        if exe is None:
            raise LaunchError(f"{_label(host)}: ssh client not found: {ssh!r} (install openssh-client)")
        agent = cls(reactor, host, on_line, stdin_data)
        agent.argv = ssh_argv(host, remote_argv, ssh=exe)
        executable, args = exe, agent.argv
        if new_session and sys.executable:
            executable = sys.executable
            args = [sys.executable, "-I", "-S", "-c", _SETSID_EXEC, *agent.argv]
        try:
            # env must be explicit: spawnProcess' default is an EMPTY environment, and ssh
            # needs HOME, SSH_AUTH_SOCK, ...
            transport = reactor.spawnProcess(agent, executable, args, env=os.environ)
        except OSError as e:
            raise LaunchError(f"{_label(host)}: cannot start {exe}: {e.strerror or e}") from None
        agent.pid = transport.pid
        return agent

    # -- state -------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.exit_code is None

    def stop(self, grace: float = 5.0, term_grace: float = 2.0) -> defer.Deferred[None]:
        """Close the lifeline; SIGTERM ssh if still there after ``grace`` s, SIGKILL
        ``term_grace`` s later. Fires (never errbacks) once ssh has ended. Idempotent."""
        if not self.running:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._stop_waiters.append(waiter)
        if not self._stopping:
            self._stopping = True
            try:
                self.transport.closeStdin()  # type: ignore[union-attr]
            except Exception:  # already closed by ssh exiting; the timers still apply
                pass
            self._later(grace, self._terminate, term_grace)
        return waiter

    def _later(self, delay: float, fn: Callable[..., None], *args: object) -> None:
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.reactor.callLater(max(0.0, delay), fn, *args))

    def _terminate(self, term_grace: float) -> None:
        if self.running:
            self._signal("TERM")
            self._later(term_grace, self._signal, "KILL")

    def _signal(self, sig: str) -> None:
        # Only ever the pid we spawned; Twisted forgets it once reaped, so no pid reuse.
        if self.running and self.transport is not None:
            try:
                self.transport.signalProcess(sig)
            except (ProcessExitedAlready, OSError):
                pass

    # -- ProcessProtocol ------------------------------------------------------

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        if self._stdin_data:
            self.transport.write(self._stdin_data)  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self._feed(1, data)

    def errReceived(self, data: bytes) -> None:
        self._feed(2, data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD in self._partial:
            self._flush(childFD)

    def processExited(self, reason: Failure) -> None:
        # processEnded waits for the output pipes too; a process ssh left behind (a
        # ProxyCommand, a ControlPersist master) could hold them open for ever.
        self._later(_PIPE_LINGER, self._abandon_pipes)

    def processEnded(self, reason: Failure) -> None:
        for fd in self._partial:
            self._flush(fd)
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        self.exit_code = _exit_code(reason)
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        self.ended.callback(self.exit_code)

    def _abandon_pipes(self) -> None:
        if self.running and self.transport is not None:
            self.transport.loseConnection()

    # -- lines -------------------------------------------------------------------

    def _feed(self, fd: int, data: bytes) -> None:
        lines = (self._partial[fd] + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > _MAX_LINE:
            lines.append(rest)
            rest = b""
        self._partial[fd] = rest
        for line in lines:
            self._emit(fd, line)

    def _flush(self, fd: int) -> None:
        rest, self._partial[fd] = self._partial[fd], b""
        if rest:
            self._emit(fd, rest)

    def _emit(self, fd: int, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")  # ssh's own messages end in \r\n
        if not line.strip():
            return
        if fd == 2:
            self.stderr_tail.append(line)
        try:
            self._on_line(line)
        except Exception:
            log.failure("on_line failed for {name}", name=self.host.name)


launch = LaunchedAgent.launch


# -- explaining failures --------------------------------------------------------------

_AUTH = re.compile(r"Permission denied.*|Too many authentication failures.*|"
                   r"No more authentication methods.*|Authentication failed.*")
_HOSTKEY = re.compile(r"Host key verification failed.*|REMOTE HOST IDENTIFICATION HAS CHANGED.*|"
                      r"No matching host key type found.*|Unable to negotiate.*")
_UNREACHABLE = re.compile(r"Connection refused.*|No route to host.*|Network is unreachable.*|"
                          r"Could not resolve hostname.*|Name or service not known.*|"
                          r"Temporary failure in name resolution.*|\S*\s*timed out.*", re.IGNORECASE)
_HANDSHAKE = re.compile(r"kex_exchange_identification.*|Connection closed by \S+ port \d+.*|"
                        r"banner exchange.*")
_LOST = re.compile(r"Connection to \S+ closed by remote host.*|Timeout, server \S+ not responding.*|"
                   r"Connection reset by peer.*|Broken pipe.*|Killed by signal.*")
_NO_CONNSCALE = re.compile(r"(?:(\S+): )?No module named '?connscale'?\s*$")
_NO_MAIN = re.compile(r"No module named '?connscale\.__main__'?")
_NO_MODULE = re.compile(r"No module named '([^']+)'")


def _label(host: ClientHost) -> str:
    user = host.user or _current_user()
    where = f"[{host.host}]" if ":" in host.host else host.host
    return f"{host.name} ({user}@{where}:{host.port})"


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry, no LOGNAME: still say something
        return str(os.getuid())


def _clean(line: str, limit: int = 200) -> str:
    # One line, bounded, no terminal control characters from the remote side.
    text = "".join(ch if ch.isprintable() else " " for ch in line).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _search(pattern: re.Pattern[str], lines: Sequence[str]) -> str | None:
    for line in reversed(lines):
        match = pattern.search(line)
        if match:
            return match.group(0).rstrip(". ")
    return None


def explain_failure(host: ClientHost, exit_code: int | None, stderr_tail: Sequence[str]) -> str:
    """One line saying why an ssh-launched agent ended, and what to change.

    Exit 255 is ssh's own failure (connect, auth, host key, lost connection); other codes
    come from the remote command; a negative code is the signal that killed local ssh.
    """
    label = _label(host)
    lines = [c for c in (_clean(line) for line in stderr_tail) if c]
    last = lines[-1] if lines else "no error output"

    if exit_code in (255, None):
        if found := _search(_AUTH, lines):
            return (f"{label}: ssh authentication refused ({found}); "
                    "check the key in ssh_options or the remote authorized_keys")
        if found := _search(_HOSTKEY, lines):
            return (f"{label}: ssh host key problem ({found}); add the host to known_hosts "
                    "(ssh-keyscan) or pass -o StrictHostKeyChecking=accept-new in ssh_options")
        if found := _search(_UNREACHABLE, lines):
            return f"{label}: host unreachable ({found})"
        if found := _search(_HANDSHAKE, lines):
            return f"{label}: the ssh server closed the connection before login ({found})"
        if found := _search(_LOST, lines):
            return f"{label}: ssh connection lost ({found})"
        if exit_code == 255:
            return f"{label}: ssh failed (exit 255): {last}"

    if exit_code == 127:
        return f"{label}: remote command not found: {host.python} (exit 127); set clients.{host.name}.python"
    if exit_code == 126:
        return (f"{label}: remote command not executable: {host.python} (exit 126: {last}); "
                f"set clients.{host.name}.python")
    for line in reversed(lines):
        if match := _NO_CONNSCALE.search(line):
            python = match.group(1) or host.python
            return (f"{label}: connscale is not installed for {python} on the remote host "
                    "(No module named connscale)")
        if _NO_MAIN.search(line):
            return (f"{label}: connscale on the remote host cannot run as `python -m connscale` "
                    f"(too old?); upgrade it for {host.python}")
        if match := _NO_MODULE.search(line):
            return (f"{label}: a module connscale needs is missing on the remote host "
                    f"(No module named '{match.group(1)}'); install connscale's dependencies "
                    f"for {host.python}")
    if exit_code is None:
        return f"{label}: agent ended: {last}"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        return f"{label}: ssh was killed by {name}: {last}"
    return f"{label}: agent exited with code {exit_code}: {last}"
