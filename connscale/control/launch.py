"""Start a connscale agent on another machine through the system's ``ssh``.

This is the analogue of Erlang's slave start: the hub runs ``ssh host python3 -m connscale
agent ...`` and keeps that ssh process as the agent's *lifeline*. We use the system ssh
rather than conch so that the user's keys, agent, ``~/.ssh/config``, ProxyJump and
known_hosts all just work.

The lifeline: the agent's key (for its own name only, never the secret) is written to
ssh's stdin (the agent reads it with ``--secret-file /dev/stdin``) and stdin then stays
open. ``clients.NAME.env`` travels the same way, ahead of the key: a small ``sh`` prelude
on the remote side reads ``NAME=value`` lines up to an empty one and exports them before
it execs the agent, so no value is ever on a command line (``ps`` shows every local user
the command lines of ssh and of the remote agent). Without a tty, sshd gives the
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

from twisted.logger import Logger

from connscale.config.settings import ClientHost, ClientSettings
from connscale.procs.child import ChildProcess

__all__ = [
    "LaunchError", "LaunchedAgent", "explain_failure", "launch", "remote_agent_argv", "remote_command",
    "remote_observer_argv", "run_flags", "ssh_argv", "stdin_for",
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


def _remote_connscale(host: ClientHost, verb: str, master: str, name_flag: str) -> list[str]:
    """`python -m connscale VERB` on ``host``, reporting to ``master`` under the entry's name,
    its key on stdin (which then stays open as its lifeline)."""
    return [host.python, "-m", "connscale", verb, "--master", master, name_flag, host.name,
            "--secret-file", "/dev/stdin", "--lifeline"]


def run_flags(client: ClientSettings) -> list[str]:
    """The hub's `client:` settings a remote agent needs and cannot read (it has no config file
    there): how its connections ping, time out, frame and close, and its connect rate."""
    return ["--interval", f"{client.interval:g}", "--timeout", f"{client.timeout:g}", "--framing", client.framing,
            "--close", client.close, "--rate", f"{client.rate:g}"]


def remote_agent_argv(host: ClientHost, master: str, extra: Sequence[str] = ()) -> list[str]:
    """The agent command line to run on ``host`` (``host.env`` is applied by :func:`ssh_argv`)."""
    argv = _remote_connscale(host, "agent", master, "--name")
    if host.source_ips:
        argv += ["--source-ip", ",".join(host.source_ips)]
    argv += ["--workers", str(host.workers)]
    argv += list(extra)
    return argv


#: Reads NAME=value lines from stdin up to an empty one, exports them, runs the rest.
#: (`read` takes one byte at a time from a pipe, so what follows the empty line, the
#: agent key and the lifeline, is left for the agent.)
ENV_PRELUDE = 'while IFS= read -r kv && [ -n "$kv" ]; do export "$kv"; done; exec "$@"'


def remote_observer_argv(host: ClientHost, master: str) -> list[str]:
    """The observer command line for a `clients:` entry with `observe:` (a pid or a process name)."""
    target = host.observe or ""
    argv = _remote_connscale(host, "observe", master, "--label")
    return argv + (["--pid", target] if target.isdigit() else ["--name", target])


def remote_command(host: ClientHost, remote: Sequence[str]) -> str:
    """The one string ssh hands to the remote login shell (a POSIX shell is assumed).

    sshd forwards none of our environment (no AcceptEnv by default); `host.env` goes
    over stdin (`stdin_for`), read by ENV_PRELUDE, never on this command line."""
    if not remote:
        raise ValueError("empty remote command")
    prefix = ["sh", "-c", ENV_PRELUDE, "sh"] if host.env else []
    return shlex.join([*prefix, *remote])


def stdin_for(host: ClientHost, key_line: bytes) -> bytes:
    """What ssh's stdin carries before it stays open as the lifeline: `host.env` for
    ENV_PRELUDE (NAME=value lines and an empty one), then the agent's key line."""
    env = b"".join(f"{k}={v}\n".encode() for k, v in host.env.items()) + b"\n" if host.env else b""
    return env + key_line.rstrip(b"\n") + b"\n"


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


class LaunchedAgent(ChildProcess):
    """One local ``ssh`` process running a remote agent; see the module docstring.

    The lifeline is the child's stdin, so `stop()` closes it first and only then
    escalates to SIGTERM and SIGKILL of the local ssh.
    """

    tail_lines = STDERR_TAIL_LINES

    def __init__(self, reactor: Any, host: ClientHost, on_line: Callable[[str], None],
                 stdin_data: bytes = b"") -> None:
        super().__init__(reactor, host.name, stdin_data)
        self.host = host
        self.argv: list[str] = []
        #: ssh's own error output (and the remote agent's stderr), for explain_failure.
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._on_line = on_line

    @classmethod
    def launch(cls, reactor: Any, host: ClientHost, remote_argv: Sequence[str], stdin_data: bytes,
               on_line: Callable[[str], None], ssh: str = "ssh", *,
               new_session: bool = True) -> LaunchedAgent:
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
            # Our environment: ssh needs HOME, SSH_AUTH_SOCK, ...
            agent.spawn(args, executable=executable)
        except OSError as e:
            raise LaunchError(f"{_label(host)}: cannot start {exe}: {e.strerror or e}") from None
        return agent

    def line(self, fd: int, text: str) -> None:
        if fd == 2:
            self.stderr_tail.append(text)
        try:
            self._on_line(text)
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
