"""Exit when stdin closes: whoever started us (an ssh session, `connscale run`) is gone.

A tty-less child gets no SIGHUP when its parent dies, and a parent killed with
SIGKILL cannot stop it; the one thing the kernel always does is close the
parent's end of our stdin pipe. So the parent keeps that pipe open for as long
as it wants us, and EOF on it means: shut down (workers and all).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from connscale.procs.childproc import stop_reactor

log = Logger(namespace="connscale.lifeline")


class _Watch(protocol.Protocol):
    def __init__(self, reactor: Any, prog: str) -> None:
        self.reactor = reactor
        self.prog = prog

    def dataReceived(self, data: bytes) -> None:
        pass  # anything written to the lifeline means nothing; only EOF does

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        log.info("{prog}: stdin closed (whoever started us is gone); exiting", prog=self.prog)
        stop_reactor(self.reactor)


class Lifeline(Service):
    def __init__(self, reactor: Any, prog: str) -> None:
        self.reactor = reactor
        self.prog = prog

    def startService(self) -> None:
        super().startService()
        from twisted.internet import stdio

        # stdout is our log: hand StandardIO a duplicate it may close freely.
        # mypy reads twisted.internet.stdio's Windows branch, whose StandardIO has no `stdout`.
        stdio.StandardIO(_Watch(self.reactor, self.prog), stdout=os.dup(1), reactor=self.reactor)  # type: ignore[call-arg]
