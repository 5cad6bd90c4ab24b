"""One wrapper for every child process connscale starts.

Workers (PB over their pipes), ssh-launched agents and the hub and agent of
`connscale run` are all a `ChildProcess`: the pid we spawned, an `ended`
Deferred with the exit code, signals sent only to that pid, a stop that
escalates (close stdin or TERM, then KILL), and output split into bounded
lines with a tail kept for error messages. Subclasses say what a line means
(`line`) and what an exit means (`exited`); the rest is here once.
"""

from __future__ import annotations

import os
import signal as signals
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["ChildProcess", "SECRET_VARIABLES", "child_environment", "describe_exit", "exit_code_of", "MAX_LINE",
           "PIPE_LINGER"]

log = Logger(namespace="connscale.child")

#: A line longer than this is passed on in pieces (a child cannot grow our memory).
MAX_LINE = 64 * 1024
#: After the process exited, how long its output pipes may stay open (see processExited).
PIPE_LINGER = 2.0


def exit_code_of(reason: Failure) -> int:
    """subprocess' convention: the exit status, or minus the signal that killed it."""
    value = reason.value
    code = getattr(value, "exitCode", None)
    if code is not None:
        return int(code)
    sig = getattr(value, "signal", None)
    return -int(sig) if sig else -1


def describe_exit(reason: Failure) -> str:
    """'exited with status 3' or 'was killed by signal 9 (SIGKILL)': how a child ended, in words."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signals.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by signal {sig} ({name})"
    code = getattr(value, "exitCode", None)
    return f"exited with status {code}" if code is not None else "ended"


#: Where a client worker finds its target's password (Redis AUTH, MQTT CONNECT): its
#: environment, which only its user can read, never its command line, which `ps` shows
#: every user of the host (`procs.records.without_password`).
PASSWORD_VARIABLE = "CONNSCALE_TARGET_PASSWORD"

#: Variables that carry secrets to a process (`connscale run` to its hub and agent, an
#: agent to its client workers): no other child has a use for them.
SECRET_VARIABLES = ("CONNSCALE_SECRET", "CONNSCALE_CLIENTS_ENV", PASSWORD_VARIABLE)


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment (or `env`) without the secrets of SECRET_VARIABLES."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in SECRET_VARIABLES}


class ChildProcess(ProcessProtocol):
    """The parent's end of one child process.

    `line_fds` are the child fds whose output is split into lines and handed to
    `line(fd, text)`; the last `tail_lines` of them are kept in `tail`.
    """

    line_fds: tuple[int, ...] = (1, 2)
    tail_lines = 20

    def __init__(self, reactor: Any, name: str, stdin_data: bytes = b"") -> None:
        self.reactor = reactor
        self.name = name
        self.pid: int | None = None
        #: Fires with the exit code (negative: killed by that signal); never errbacks.
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.exit_code: int | None = None
        self.tail: deque[str] = deque(maxlen=self.tail_lines)
        self._stdin_data = stdin_data
        self._partial: dict[int, bytes] = {fd: b"" for fd in self.line_fds}
        self._stop_waiters: list[defer.Deferred[None]] = []
        self._timers: list[Any] = []
        self._stopping = False

    # -- starting ------------------------------------------------------------------
    def spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None, path: str | None = None,
              child_fds: Mapping[int, Any] | None = None, executable: str | None = None) -> "ChildProcess":
        """Start `argv`; our environment less the control secret (`child_environment`) unless
        `env` is given (spawnProcess' default is an EMPTY one). Raises OSError when the
        executable cannot be started."""
        self.reactor.spawnProcess(self, executable or argv[0], list(argv),
                                  env=dict(child_environment() if env is None else env), path=path,
                                  childFDs=dict(child_fds) if child_fds is not None else None)
        return self

    # -- state -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.exit_code is None

    def signal(self, sig: str) -> None:
        """Signal the pid we spawned (Twisted forgets it once reaped: no pid reuse)."""
        if self.running and self.transport is not None:
            try:
                self.transport.signalProcess(sig)
            except (ProcessExitedAlready, OSError):
                pass

    def stop(self, grace: float = 5.0, term_grace: float = 2.0, *, terminate: bool = False) -> defer.Deferred[None]:
        """End the child; fires (never errbacks) once it has ended. Idempotent.

        By default stdin is closed first (a lifeline or a PB pipe: the child
        leaves by itself), SIGTERM follows after `grace` s and SIGKILL
        `term_grace` s later. With `terminate`, SIGTERM is sent at once and
        SIGKILL after `grace`.
        """
        if not self.running:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._stop_waiters.append(waiter)
        if not self._stopping:
            self._stopping = True
            if terminate:
                self.signal("TERM")
                self.later(grace, self.signal, "KILL")
            else:
                self.close_stdin()
                self.later(grace, self._terminate, term_grace)
        return waiter

    def close_stdin(self) -> None:
        try:
            self.transport.closeStdin()  # type: ignore[union-attr]
        except Exception:  # already closed by the child exiting; the timers still apply
            pass

    def later(self, delay: float, fn: Callable[..., object], *args: object) -> None:
        """A timer that is cancelled when the child ends."""
        self._timers = [t for t in self._timers if t.active()]
        self._timers.append(self.reactor.callLater(max(0.0, delay), fn, *args))

    def _terminate(self, term_grace: float) -> None:
        if self.running:
            self.signal("TERM")
            self.later(term_grace, self.signal, "KILL")

    # -- ProcessProtocol ---------------------------------------------------------
    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        if self._stdin_data:
            self.transport.write(self._stdin_data)  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD in self._partial:
            self._feed(childFD, data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD in self._partial:
            self._flush(childFD)

    def processExited(self, reason: Failure) -> None:
        # processEnded waits for the output pipes too; a process the child left
        # behind (ssh's ProxyCommand, a grandchild) could hold them open for ever.
        self.later(PIPE_LINGER, self._abandon_pipes)

    def processEnded(self, reason: Failure) -> None:
        for fd in self._partial:
            self._flush(fd)
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        self.exit_code = exit_code_of(reason)
        try:
            self.exited(reason)
        finally:
            waiters, self._stop_waiters = self._stop_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            self.ended.callback(self.exit_code)

    def _abandon_pipes(self) -> None:
        if self.running and self.transport is not None:
            self.transport.loseConnection()

    # -- hooks -------------------------------------------------------------------------
    def line(self, fd: int, text: str) -> None:
        """One line of output (without its end); logged by default."""
        log.info("[{name}] {line}", name=self.name, line=text)

    def exited(self, reason: Failure) -> None:
        """The child has ended (`exit_code` is set); called before `ended` fires."""

    # -- lines ---------------------------------------------------------------------------
    def _feed(self, fd: int, data: bytes) -> None:
        lines = (self._partial[fd] + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        self._partial[fd] = rest
        for raw in lines:
            self._emit(fd, raw)

    def _flush(self, fd: int) -> None:
        rest, self._partial[fd] = self._partial[fd], b""
        if rest:
            self._emit(fd, rest)

    def _emit(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r\n")  # ssh's own messages end in \r\n
        if not text.strip():
            return
        self.tail.append(text)
        try:
            self.line(fd, text)
        except Exception:
            log.failure("handling a line of {name} failed", name=self.name)
