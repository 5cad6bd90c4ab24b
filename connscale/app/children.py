"""The hub and agent processes of `connscale run`.

Each child's output goes to its log file in the run directory, and its stdin
is a pipe from us that it treats as a lifeline (`--lifeline`): if the run
process dies, even by SIGKILL, the pipe closes and the child shuts down (and
its workers with it), so a run never leaves orphans holding sockets.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Mapping

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

TAIL_LINES = 20


def describe_exit(reason: Failure) -> str:
    """'exited with status 3' or 'was killed by signal 9 (SIGKILL)'."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by signal {sig} ({name})"
    code = getattr(value, "exitCode", None)
    return f"exited with status {code}" if code is not None else "ended"


class RunChild(ProcessProtocol):
    """One child: logs to a file, `ended` fires with (exit code or -1, description)."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "ab", buffering=0)
        self.ended: defer.Deferred[tuple[int, str]] = defer.Deferred()
        self.pid: int | None = None
        self.tail: list[str] = []
        self.exit_description = ""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        # stdin stays open: it is the child's lifeline (see the module docstring).

    def childDataReceived(self, fd: int, data: bytes) -> None:
        try:
            self.log.write(data)
        except OSError:
            pass  # a full disk must not take the run down; the tail below still has it
        self.tail = (self.tail + data.decode("utf-8", "replace").splitlines())[-TAIL_LINES:]

    def processEnded(self, reason: Failure) -> None:
        try:
            self.log.close()
        except OSError:
            pass
        self.exit_description = describe_exit(reason)
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback((code if code is not None else -1, self.exit_description))

    @property
    def running(self) -> bool:
        return not self.ended.called

    def last_lines(self, n: int = 3) -> str:
        return " | ".join(line.strip() for line in self.tail[-n:] if line.strip())

    def signal(self, sig: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(sig)  # type: ignore[union-attr]
            except Exception:
                pass  # already gone between our check and the kill

    def close_lifeline(self) -> None:
        if self.running:
            try:
                self.transport.closeStdin()  # type: ignore[union-attr]
            except Exception:
                pass


def spawn(reactor: Any, name: str, args: list[str], log_path: Path, env: Mapping[str, str]) -> RunChild:
    """`python -m connscale ARGS --lifeline` in our working directory, so relative
    paths in the config (a secret file, a CA) mean the same to every process."""
    child = RunChild(name, log_path)
    argv = [sys.executable, "-m", "connscale", *args, "--lifeline"]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **env)
    reactor.spawnProcess(child, sys.executable, argv, env=full_env, path=os.getcwd())
    return child


@defer.inlineCallbacks
def stop_all(reactor: Any, children: list[RunChild], grace: float = 15.0):  # type: ignore[no-untyped-def]
    """SIGTERM each child we started, then SIGKILL what is still there after `grace`."""
    for child in children:
        child.signal("TERM")
    for child in children:
        if child.running:
            timer = reactor.callLater(grace, child.signal, "KILL")
            yield child.ended
            if timer.active():
                timer.cancel()
