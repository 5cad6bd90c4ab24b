"""Supervise worker processes of one role: start, poll, reassign, restart.

A worker that dies is reported, its connections are counted as lost with
cause `worker_lost`, its counters are kept (so totals never go backwards) and
a new worker takes over its assignment after a short delay.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import attrs
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.spread import pb

from connscale.records.packed import PackError, pack, unpack
from connscale.deadline import all_within
from connscale.records.base import RecordError
from connscale.host.resources import process_stopped
from connscale.metrics.snapshot import Snapshot, sum_snapshots
from connscale.metrics.stall import StallWatch
from connscale.net.routes import Route
from connscale.procs.child import describe_exit
from connscale.procs.childproc import PBChild, spawn_python
from connscale.procs.records import (
    MAX_LOSSES,
    ClientSpec,
    WorkerHello,
    WorkerLoss,
    WorkerOrder,
    WorkerRow,
    WorkerSpec,
    check_worker_snapshot,
    without_password,
)

log = Logger(namespace="connscale.supervisor")



@attrs.define
class Slot:
    index: int
    child: PBChild | None = None
    target: int = 0
    routes: tuple[Route, ...] = ()
    last: dict[str, Any] | None = None
    budget: int = 0
    pid: int | None = None
    restarts: int = 0
    alive: bool = False
    started_at: float = 0.0
    delay: float = 0.0
    answered_at: float = 0.0
    rate: float | None = None  # this worker's share of the agent's connect rate
    asking: defer.Deferred[None] | None = None  # a snapshot call not answered yet
    #: Set when we kill it as hung: its loss is ours, said so in words.
    killed_as_hung: str = ""


#: How long a poll waits for a worker's answer unless told otherwise. A worker
#: that is stopped or saturated answers later (or never): the round goes on
#: with its previous snapshot (its row's `silent_s` says how old) instead of
#: freezing every count, the timeline and the diagnosis until the hung-worker
#: kill. Callers that must answer within a second pass less (the hub's
#: Collector its `answer_wait`, an agent's report agent.REPORT_WAIT).
POLL_WAIT = 2.0
#: The questions of one poll go out over this many seconds (the k-th of n at
#: k/n of it), not at one instant: at a million the hub and the agent each ask
#: 53 workers, and asked together every worker woke at once, each spending ~1 ms
#: while the pings that arrived meanwhile queued behind them (the RTT's p99 then
#: measured connscale's own once-a-second burst). Well below the shortest
#: caller's wait (agent.REPORT_WAIT, 0.4 s) so a worker with a CPU answers in time.
POLL_SPREAD = 0.15


class Supervisor:
    def __init__(
        self,
        reactor: Any,
        role: str,
        spec: WorkerSpec,
        name: str,
        restart_delay: float = 1.0,
        on_rtt: Callable[[str], None] | None = None,
        hung_after: float = 30.0,
        is_stopped: Callable[[int], bool | None] = process_stopped,
    ) -> None:
        #: Reads whether a worker's process is stopped (injected: tests fake the kernel's answer).
        self.is_stopped = is_stopped
        #: A live worker silent this long is hung: it is killed and replaced.
        self.hung_after = hung_after
        self.reactor = reactor
        self.role = role
        self.spec = spec
        self.name = name
        self.restart_delay = restart_delay
        self.slots: list[Slot] = []
        self.retired: list[Snapshot] = []
        self.lost_workers = 0
        #: The first MAX_LOSSES workers lost, each with how it ended and what it held.
        self.losses: list[WorkerLoss] = []
        self._losses_taken = 0
        self.stopping = False
        self.rtt_listeners: list[Callable[[str], None]] = [on_rtt] if on_rtt else []
        #: Told of every snapshot's TLS handshake times (encoded buckets), as rtt_listeners of its RTTs.
        self.handshake_listeners: list[Callable[[str], None]] = []
        self.events: list[str] = []
        self.stall = StallWatch(reactor, self._stalled)
        #: When the last poll started (an agent polls less when its hub just did).
        self.polled_at = float("-inf")

    # -- lifecycle -----------------------------------------------------------
    def ensure(self, count: int) -> defer.Deferred[list[int]]:
        """Run at least `count` workers; fires with every worker's fd budget."""
        if not self.stopping:
            self.stall.start()
        starting = []
        while len(self.slots) < count:
            slot = Slot(len(self.slots))
            self.slots.append(slot)
            starting.append(self._spawn(slot))
        d = defer.gatherResults(starting, consumeErrors=True) if starting else defer.succeed(None)
        return d.addCallback(lambda _: [s.budget for s in self.slots])

    def _spawn(self, slot: Slot) -> defer.Deferred[None]:
        label = f"{self.name}-{self.role}-worker-{slot.index + 1}"
        spec = attrs.evolve(self.spec, name=label, index=slot.index)
        child = PBChild(label, lambda c, reason: self._exited(slot, c, reason))
        slot.child = child
        shown, secrets = without_password(spec)
        spawn_python(self.reactor, "connscale.procs.worker", [self.role, json.dumps(shown.to_wire())], child,
                     env=secrets)
        slot.pid = child.pid

        slot.started_at = self.reactor.seconds()

        def ready(data: object) -> defer.Deferred[None] | None:
            hello = WorkerHello.from_wire(data)
            slot.alive = True
            slot.answered_at = self.reactor.seconds()
            slot.budget = hello.budget
            slot.pid = hello.pid
            log.info("{label} started (pid {pid}, fd budget {budget})", label=label, pid=slot.pid, budget=slot.budget)
            if slot.target or slot.routes:
                return self._push(slot)
            return None

        return child.ready.addCallback(ready)

    def _exited(self, slot: Slot, child: PBChild, reason: Failure) -> None:
        if slot.child is not child:
            return
        slot.alive = False
        slot.child = None
        if self.stopping:
            return
        held = int((slot.last or {}).get("open", 0))
        self.lost_workers += 1
        if slot.last:
            snap = Snapshot.from_dict(slot.last)
            failures = dict(snap.failures)
            if held:
                failures["steady:worker_lost"] = failures.get("steady:worker_lost", 0) + held
            self.retired.append(attrs.evolve(snap, open=0, closed=snap.closed + held, failures=failures, rtt="",
                                             handshake=""))
        slot.last = None
        # A worker that keeps dying at once must not become a fork loop.
        lived = self.reactor.seconds() - slot.started_at
        slot.delay = self.restart_delay if lived > 30 or not slot.delay else min(slot.delay * 2, 30.0)
        how = slot.killed_as_hung or describe_exit(reason)
        slot.killed_as_hung = ""
        if len(self.losses) < MAX_LOSSES:
            self.losses.append(WorkerLoss(worker=child.name, side=self.role, pid=child.pid, how=how,
                                          connections=held, t=self.reactor.seconds()))
        message = (
            f"{child.name} (pid {child.pid}) lost: it {how}; "
            f"{held} connections lost with it; restarting in {slot.delay:g}s"
        )
        self.events.append(message)
        log.warn("{message}", message=message)
        slot.restarts += 1
        self.reactor.callLater(slot.delay, self._restart, slot)

    def _restart(self, slot: Slot) -> None:
        if self.stopping or slot.child is not None:
            return
        # A failed start is reported by _exited, which schedules the next try.
        self._spawn(slot).addErrback(lambda _: None)

    def stop(self, grace: float = 5.0) -> defer.Deferred[None]:
        """Drain connections, then end every worker (by the pid we started)."""
        self.stopping = True
        self.stall.stop()
        live = [s for s in self.slots if s.child is not None and s.child.running]
        if not live:
            return defer.succeed(None)
        waits = []
        for slot in live:
            child = slot.child
            assert child is not None
            done: defer.Deferred[None] = defer.Deferred()
            old = child.on_exit

            def exited(c: PBChild, reason: Failure, done: defer.Deferred[None] = done, old=old) -> None:
                old(c, reason)
                if not done.called:
                    done.callback(None)

            child.on_exit = exited
            drain = child.call("drain") if self.role == "client" else defer.succeed(None)
            drain.addBoth(lambda _, c: c.call("exit"), child).addErrback(lambda _: None)
            waits.append(done)
            self.reactor.callLater(grace, child.signal, "TERM")
            self.reactor.callLater(grace + 2.0, child.signal, "KILL")
        return defer.DeferredList(waits).addCallback(lambda _: None)

    # -- orders ------------------------------------------------------------------
    def apply(self, orders: Sequence[WorkerOrder]) -> defer.Deferred[None]:
        """Give worker i `orders[i]`; workers beyond the orders get a target of 0."""
        calls = []
        targets = [orders[i].target if i < len(orders) else 0 for i in range(len(self.slots))]
        rates = self.rate_shares(targets)
        for i, slot in enumerate(self.slots):
            order = orders[i] if i < len(orders) else WorkerOrder(0, slot.routes)
            slot.target, slot.routes = order.target, order.routes
            slot.rate = rates[i] if rates else None
            if slot.alive:
                calls.append(self._push(slot))
        return defer.gatherResults(calls, consumeErrors=True).addCallback(lambda _: None)

    def rate_shares(self, targets: Sequence[int]) -> list[float] | None:
        """Split this agent's connect rate (spec.rate) between its workers.

        By what each has still to open, so that together they connect at the
        rate asked (not a rate per worker: fifty workers must not try fifty
        times it) and finish together. A worker with nothing to open keeps a
        small share for replacing what it loses. None for roles without a rate.
        """
        total = getattr(self.spec, "rate", None)
        n = len(self.slots)
        if not total or not n:
            return None
        held = [int((s.last or {}).get("open", 0)) for s in self.slots]
        want = [max(0, t - h) for t, h in zip(targets, held)]
        floor = total / n / 10
        if not sum(want):
            return [total / n] * n
        return [max(total * w / sum(want), floor) for w in want]

    def _push(self, slot: Slot) -> defer.Deferred[None]:
        assert slot.child is not None
        order = WorkerOrder(slot.target, slot.routes, slot.rate)
        return slot.child.call("set_target_packed", pack(order.to_wire())).addCallback(lambda _: None)

    def set_rate(self, rate: float) -> defer.Deferred[list[Any]]:
        """A new connect rate for this agent, split between its workers."""
        assert isinstance(self.spec, ClientSpec)  # only a client's workers pace connects (an agent's)
        self.spec = attrs.evolve(self.spec, rate=rate)
        shares = self.rate_shares([s.target for s in self.slots]) or []
        calls = []
        for slot, share in zip(self.slots, shares):
            slot.rate = share
            if slot.alive and slot.child is not None:
                calls.append(slot.child.call("set_rate", share))
        return defer.gatherResults(calls, consumeErrors=True)

    def call_all(self, method: str, *args: Any) -> defer.Deferred[list[Any]]:
        calls = [s.child.call(method, *args) for s in self.slots if s.alive and s.child is not None]
        return defer.gatherResults(calls, consumeErrors=True)

    # -- our own stalls ------------------------------------------------------------
    def _stalled(self, seconds: float) -> None:
        """We did not run for `seconds`: the workers' silence meanwhile is ours, not theirs."""
        message = (f"{self.name} {self.role} supervisor was stalled for {seconds:.0f}s; "
                   "worker silence during the stall is not held against them")
        self.events.append(message)
        log.warn("{message}", message=message)
        now = self.reactor.seconds()
        for slot in self.slots:
            slot.answered_at = max(slot.answered_at, now)

    # -- statistics ----------------------------------------------------------------
    def poll(self, wait: float = POLL_WAIT, fresh: float = 0.0, spread: float = POLL_SPREAD) -> defer.Deferred[None]:
        """Ask every live worker for its snapshot; kill the ones that stopped answering.

        Fires when every worker has answered or after `wait` seconds. A worker
        is asked one question at a time: a slow one is not asked again until it
        answers, and its late answer lands in `last` (its RTTs go to the
        listeners then, once). A worker that answered less than `fresh` seconds
        ago is not asked again (the hub's tick and a `connscale run` stats poll
        would otherwise ask every server worker twice a second). The questions
        go out over `spread` seconds (see POLL_SPREAD)."""
        calls = []
        now = self.polled_at = self.reactor.seconds()
        asking = [s for s in self.slots if s.alive and s.child is not None and s.asking is None]
        offsets = {id(s): spread * k / len(asking) for k, s in enumerate(asking)} if asking else {}
        self.stall.check()
        for slot in self.slots:
            if not (slot.alive and slot.child is not None):
                continue
            if not self.stopping and now - slot.answered_at > self.hung_after:
                message = (
                    f"{slot.child.name} (pid {slot.pid}) has not answered for "
                    f"{now - slot.answered_at:.0f}s; killing it"
                )
                self.events.append(message)
                log.warn("{message}", message=message)
                slot.killed_as_hung = f"was killed by its supervisor as hung (no answer for {now - slot.answered_at:.0f} s)"
                slot.child.signal("KILL")  # the pid we started; _exited counts the loss
                continue
            if slot.asking is None and slot.last is not None and now - slot.answered_at < fresh:
                continue
            if slot.asking is None:
                # One question at a time: a late answer still lands in `last`.
                call = self._ask_later(slot, offsets.get(id(slot), 0.0))
                call.addCallback(self._got, slot).addErrback(lambda _: None)
                call.addBoth(self._answered, slot)
                slot.asking = call
            calls.append(slot.asking)
        return all_within(self.reactor, calls, wait).addCallback(lambda _: None)

    def _ask_later(self, slot: Slot, delay: float) -> defer.Deferred[Any]:
        """`snapshot_packed`, asked `delay` seconds from now (at once for 0)."""
        if delay <= 0:
            return self._ask(slot)
        out: defer.Deferred[Any] = defer.Deferred()

        def ask() -> None:
            if slot.child is None:
                out.errback(Failure(pb.DeadReferenceError(f"worker {slot.index} is gone")))
                return
            self._ask(slot).chainDeferred(out)

        self.reactor.callLater(delay, ask)
        return out

    def _ask(self, slot: Slot) -> defer.Deferred[Any]:
        assert slot.child is not None
        return slot.child.call("snapshot_packed").addTimeout(self.hung_after, self.reactor)

    @staticmethod
    def _answered(result: Any, slot: Slot) -> Any:
        slot.asking = None
        return result

    def _got(self, data: Any, slot: Slot) -> None:
        try:
            data = check_worker_snapshot(unpack(data))
        except (RecordError, PackError) as e:
            # Not an answer: a worker that only sends junk ends up killed as hung.
            log.warn("{name}: snapshot refused: {why}", name=slot.child.name if slot.child else slot.index, why=str(e))
            return
        slot.answered_at = self.reactor.seconds()
        slot.last = data
        for key, listeners in (("rtt", self.rtt_listeners), ("handshake", self.handshake_listeners)):
            if data.get(key):
                for listener in listeners:
                    listener(data[key])

    def totals(self) -> Snapshot:
        live = [Snapshot.from_dict(s.last) for s in self.slots if s.last]
        return sum_snapshots([*live, *self.retired])

    def workers(self) -> list[WorkerRow]:
        now = self.reactor.seconds()
        out = []
        for s in self.slots:
            last = s.last or {}
            silent = round(now - s.answered_at, 1) if s.alive else None
            # Only for one already late: a stopped worker and a starved one need different fixes.
            stopped = self.is_stopped(s.pid) if silent is not None and silent >= 1.0 and s.pid else None
            out.append(
                WorkerRow(
                    index=s.index,
                    pid=s.pid,
                    alive=s.alive,
                    target=s.target,
                    open=int(last.get("open", 0)),
                    budget=s.budget,
                    restarts=s.restarts,
                    resources=dict(last.get("resources", {})),
                    load=dict(last.get("load", {})),
                    # Seconds since it last answered a poll: a stopped or wedged
                    # worker shows here long before the hung-worker kill.
                    silent_s=silent,
                    stopped=stopped,
                )
            )
        return out

    def take_losses(self) -> list[WorkerLoss]:
        """Losses recorded since the last call (an agent sends them up with its report)."""
        new = self.losses[self._losses_taken:]
        self._losses_taken = len(self.losses)
        return new

    def take_events(self) -> list[str]:
        """Losses and kills since the last call, for whoever reports upward."""
        events, self.events = self.events, []
        return events

    def count(self) -> int:
        return sum(int((s.last or {}).get("open", 0)) for s in self.slots if s.alive)
