"""The observer: an agent that holds no connections and watches the server under test.

It runs on the server's host (`connscale observe --pid N` or `--name redis-server`,
several targets allowed; `connscale run` starts one itself for a local target)
and reads, whenever the hub asks (once a second), each target's processes (fds,
established sockets on its listening ports, RSS and PSS, CPU, threads, limits),
its listening sockets' accept queues, and this host's socket counters, socket
slab memory, conntrack and free memory (`host.watch`).

Its link to the hub is the agent's: a `link.HubLink` logging in as `agent:NAME`
with the agent key (the same mutual login, the same reconnects and keepalive),
registering with `observe` instead of `register`, so the hub keeps it apart from
the agents that hold connections. Without `--master` it logs a status line.

A target it cannot read (not ours to inspect, another namespace) is said once,
in one line, when first seen; the observer goes on with what it can read.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.spread import pb

from connscale.records.packed import pack_pieces
from connscale.config.settings import Config
from connscale.control.agent import agent_credentials, fatal
from connscale.control.link import HubLink
from connscale.control.records import AgentInfo, RegisterAnswer
from connscale.host.inventory import read_host_limits
from connscale.host.observed import MAX_EVENTS, ObserverReport, TargetEvent, TargetRow
from connscale.host.resources import cpu_count, process_resources
from connscale.host.watch import TargetSpec, TargetWatch, read_host

log = Logger(namespace="connscale.observer")
#: A reading this recent answers the hub's question as it is (the hub and our own
#: status poll would otherwise read every target twice a second).
FRESH = 0.5


class ObserverMind(pb.Referenceable):
    """What the controller may call on an observer."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer

    def remote_report_packed(self) -> list[str]:
        return pack_pieces(self.observer.report().to_wire())

    def remote_shutdown(self) -> None:
        from connscale.procs.childproc import stop_reactor

        log.info("{prog}: shutdown requested by the controller", prog=self.observer.prog)
        self.observer.reactor.callLater(0.1, stop_reactor, self.observer.reactor)


class Observer(MultiService):
    def __init__(self, reactor: Any, cfg: Config, targets: Sequence[TargetSpec], name: str | None = None,
                 master: tuple[str, int] | None = None, status_interval: float = 5.0, proc: str = "/proc",
                 prog: str = "observer") -> None:
        """StartError (one line) when it cannot log in as configured."""
        super().__init__()
        self.reactor = reactor
        self.prog = prog  # what its log lines start with (the tap's program name)
        self.cfg = cfg
        self.label = name or f"observer-{socket.gethostname()}"[:64]
        self.master = master
        self.watches = [TargetWatch(spec, proc) for spec in targets]
        self.proc = proc
        self._events: list[TargetEvent] = []
        self._last: ObserverReport | None = None
        self._read_at = -1e9
        self._said: set[str] = set()
        self.session = ""
        self.registered = 0
        self._status_every = status_interval
        self._status_at = 0.0
        self._poll = LoopingCall(self._poll_unless_asked)
        self._poll.clock = reactor
        self.link: HubLink | None = None
        if master is not None:
            credentials = agent_credentials(cfg, self.label, "--label")
            self.link = HubLink(reactor, master, f"agent:{self.label}", credentials, tls_ca=cfg.control.tls_ca,
                                mind=ObserverMind(self), on_login=self._register, on_refused=self._refused)
            self.link.setServiceParent(self)

    # -- reading ---------------------------------------------------------------------------
    def read(self) -> ObserverReport:
        """Read every target and the host now (events pile up until a report takes them)."""
        started = time.perf_counter()
        rows: list[TargetRow] = []
        for watch in self.watches:
            row, events = watch.read()
            rows.append(row)
            self._events.extend(events)
            for event in events:
                log.info("{prog}: {what}", prog=self.prog, what=event.describe())
            self._say_problems(row)
        report = ObserverReport(tuple(rows), read_host(self.proc), (),
                                round((time.perf_counter() - started) * 1000, 2))
        self._last, self._read_at = report, self.reactor.seconds()
        return report

    def _say_problems(self, row: TargetRow) -> None:
        """One line per problem, the first time it is seen: the run goes on without those rows."""
        for problem in row.problems:
            if problem not in self._said:
                self._said.add(problem)
                log.warn("{prog}: {problem}; going on without it", prog=self.prog, problem=problem)

    def report(self) -> ObserverReport:
        """The hub's question: a fresh reading (or one younger than FRESH), with the events since
        the last report."""
        if self._last is None or self.reactor.seconds() - self._read_at >= FRESH:
            self.read()
        assert self._last is not None
        events, self._events = self._events[:MAX_EVENTS], self._events[MAX_EVENTS:]
        # Its own CPU and RSS, as an agent reports its own: the hub counts it in connscale's cost.
        return ObserverReport(self._last.targets, self._last.host, tuple(events), self._last.read_ms,
                              process_resources())

    def _poll_unless_asked(self) -> None:
        """Our own once-a-second reading, unless the hub just asked: targets are followed (and
        their restarts seen) with or without a hub."""
        now = self.reactor.seconds()
        if now - self._read_at >= 0.9:
            self.read()
        if self.master is None and now - self._status_at >= self._status_every:
            self._status_at = now
            assert self._last is not None
            for row in self._last.targets:
                log.info("{prog}: {line}", prog=self.prog, line=status_line(row))

    # -- the hub ---------------------------------------------------------------------------
    @defer.inlineCallbacks
    def _register(self, perspective: pb.RemoteReference):
        answer = RegisterAnswer.from_wire((yield perspective.callRemote("observe", self.info().to_wire())))
        self.session = answer.session
        self.registered += 1
        assert self.master is not None
        log.info("{prog}: registered with controller {host}:{port} as observer {name}, watching {targets}",
                 prog=self.prog, host=self.master[0], port=self.master[1], name=self.label,
                 targets=", ".join(w.label for w in self.watches))

    def _refused(self, message: str) -> None:
        fatal(self.reactor, f"{self.prog}: {message}")

    def info(self) -> AgentInfo:
        limits = read_host_limits()
        return AgentInfo(host=socket.gethostname(), pid=os.getpid(), cores=cpu_count(), limits=limits.to_dict(),
                         memory=limits.usable_memory or 0, session=self.session,
                         master_host=self.master[0] if self.master else None)

    def startService(self) -> None:
        super().startService()
        first = self.read()
        for row in first.targets:
            log.info("{prog}: watching {line}", prog=self.prog, line=status_line(row))
        self._poll.start(1.0, now=False)

    def stopService(self):
        if self._poll.running:
            self._poll.stop()
        return super().stopService()


def status_line(row: TargetRow) -> str:
    """One `key=value` line about a target, for logs."""
    def n(v: Any) -> str:
        return "-" if v is None else str(v)

    tight = row.tightest_fds()
    queue = max((lst.queue for lst in row.listeners), default=None)
    backlog = min((lst.backlog for lst in row.listeners if lst.backlog is not None), default=None)
    return (f"target={row.label} pid={n(row.pid)} alive={row.alive} processes={len(row.processes)} "
            f"fds={n(row.fds)} established={n(row.established)} rss_mib={row.rss / 2**20:.1f} "
            f"pss_mib={'-' if row.pss is None else f'{row.pss / 2**20:.1f}'} "
            f"nofile={n(tight.nofile_soft if tight else None)} accept_queue={n(queue)}/{n(backlog)}")


def make_observer(reactor: Any, cfg: Config, targets: Sequence[TargetSpec], name: str | None,
                  master: tuple[str, int] | None, status_interval: float = 5.0, prog: str = "observer") -> Observer:
    return Observer(reactor, cfg, targets, name, master, status_interval, prog=prog)
