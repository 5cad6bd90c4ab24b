"""The hub and agent processes of `connscale run`.

Each child's output goes to its log file in the run directory, and its stdin
is a pipe from us that it treats as a lifeline (`--lifeline`): if the run
process dies, even by SIGKILL, the pipe closes and the child shuts down (and
its workers with it), so a run never leaves orphans holding sockets.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from twisted.internet import defer
from twisted.python.failure import Failure

from connscale.config.settings import Config
from connscale.control.hub import CLIENTS_ENV
from connscale.procs.child import PASSWORD_VARIABLE, ChildProcess, describe_exit

__all__ = ["RunChild", "child_env", "describe_exit", "spawn", "stop_all"]


class RunChild(ChildProcess):
    """The hub or the agent of a run: its lines go to its log file in the run directory."""

    def __init__(self, reactor: Any, name: str, log_path: Path) -> None:
        super().__init__(reactor, name)
        self.log_path = log_path
        self.log = open(log_path, "ab", buffering=0)
        self.exit_description = ""

    def line(self, fd: int, text: str) -> None:
        try:
            self.log.write(text.encode("utf-8", "replace") + b"\n")
        except OSError:
            pass  # a full disk must not take the run down; `tail` still has the line

    def exited(self, reason: Failure) -> None:
        self.exit_description = describe_exit(reason)
        try:
            self.log.close()
        except OSError:
            pass

    def last_lines(self, n: int = 3) -> str:
        return " | ".join(line.strip() for line in list(self.tail)[-n:] if line.strip())


def child_env(secret: bytes, cfg: Config) -> dict[str, str]:
    """What the run's hub and agent get in their environment beyond ours: the secret, the
    target's password and the values of `clients.*.env` (JSON), which the run directory's
    config.yaml leaves out."""
    env = {"CONNSCALE_SECRET": secret.decode()}
    password = cfg.client.target_password()
    if password is not None:
        # The target's password (client.password or the URL's): config.yaml has it redacted.
        env[PASSWORD_VARIABLE] = password
    clients = {name: dict(host.env) for name, host in cfg.clients.items() if host.env}
    if clients:
        env[CLIENTS_ENV] = json.dumps(clients)
    return env


def spawn(reactor: Any, name: str, args: list[str], log_path: Path, env: Mapping[str, str]) -> RunChild:
    """`python -m connscale ARGS --lifeline` in our working directory, so relative
    paths in the config (a secret file, a CA) mean the same to every process."""
    child = RunChild(reactor, name, log_path)
    argv = [sys.executable, "-m", "connscale", *args, "--lifeline"]
    child.spawn(argv, env=dict(os.environ, PYTHONUNBUFFERED="1", **env), path=os.getcwd())
    return child


def stop_all(children: list[RunChild], grace: float = 15.0) -> defer.Deferred[None]:
    """SIGTERM each child we started, then SIGKILL what is still there after `grace`."""
    stops = [child.stop(grace, terminate=True) for child in children]
    return defer.gatherResults(stops).addCallback(lambda _: None)
