"""One timeline line a second whatever an agent or a worker does (issue 9.3).

Fake clock, fake agent minds: each second's line is written on time from the
answers in hand; a late agent counts with its last report, marked stale with its
age; it is asked one question at a time; its late answer is counted once, in the
line written after it lands; a silent agent is still marked lost with its reason.
The same inside an agent and the hub: a supervisor's poll gives up waiting on a
slow worker after the wait it was given, and asks it nothing more meanwhile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from connscale.control.collect import ANSWER_WAIT, Collector, EventLog
from connscale.control.records import AgentReport
from connscale.control.registry import Registry
from connscale.metrics.histograms import (
    decode_histogram,
    encode_histogram,
    new_histogram,
)
from connscale.metrics.records import Stats
from connscale.metrics.snapshot import Snapshot
from connscale.metrics.timeline import Timeline, read_timeline
from connscale.procs.supervisor import Slot, Supervisor
from tests.support.minds import Mind, info, result
from tests.support.ticks import HeldChild, seconds


@pytest.fixture
def clock(clock: Clock) -> Clock:
    """The shared clock, 100 s on: the hub's records start after second 0."""
    clock.advance(100)
    return clock


def rtts(n: int, value_us: int = 1500) -> str:
    h = new_histogram()
    h.record_value(value_us, n)
    return encode_histogram(h)


class Agent:
    """A fake agent with cumulative counters: each answer reports `pings_per_answer` more
    pings, and an RTT histogram of exactly those pings (the RTTs since its last answer)."""

    def __init__(self, pings_per_answer: int, open_: int) -> None:
        self.pings = 0
        self.step = pings_per_answer
        self.open = open_
        self.sent_rtts = 0

    def answer(self) -> dict[str, Any]:
        self.pings += self.step
        self.sent_rtts += self.step
        return AgentReport(totals=Snapshot(open=self.open, opened=self.open, pings=self.pings, pongs=self.pings),
                           rtt=rtts(self.step)).to_wire()


class SlowMind(Mind):
    """Its reports are held until the test releases them: a busy agent host."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.waiting: list[defer.Deferred[Any]] = []
        super().__init__(report_packed=self._report)

    def _report(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(d)
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(self.agent.answer())

    def report_calls(self) -> int:
        return sum(1 for m, _ in self.calls if m == "report_packed")


def lines(timeline: Timeline) -> list[Stats]:
    timeline.close()
    return list(read_timeline(timeline.path))


def rtt_count(record: Stats) -> int:
    return decode_histogram(record.rtt_hist).get_total_count() if record.rtt_hist else 0


class FastAndSlow(NamedTuple):
    """A hub's collector writing a timeline, with two agents registered: `fast` (100 pings
    an answer, 10 open) answers at once, `slow` (7 pings, 5 open) when the test releases it."""

    fast: Agent
    slow: Agent
    slow_mind: SlowMind
    timeline: Timeline
    collector: Collector


@pytest.fixture
def fast_and_slow(registry: Registry, clock: Clock, events: EventLog, tmp_path: Path) -> FastAndSlow:
    fast, slow = Agent(100, open_=10), Agent(7, open_=5)
    registry.register("fast", Mind(report_packed=fast.answer), info())
    slow_mind = SlowMind(slow)
    registry.register("slow", slow_mind, info())
    timeline = Timeline(tmp_path)
    return FastAndSlow(fast, slow, slow_mind, timeline, Collector(clock, registry, events, timeline=timeline))


def test_one_line_a_second_on_time_while_an_agent_answers_3_s_late(registry: Registry, clock: Clock,
                                                                    fast_and_slow: FastAndSlow) -> None:
    _, _, slow_mind, timeline, collector = fast_and_slow
    start = clock.seconds() - collector.started

    # The slow agent answers every third second, 3 s after it was asked.
    seconds(collector, clock, 12, each=lambda i: slow_mind.release() if i % 3 == 2 else None)
    recs = lines(timeline)

    # A line every second, stamped with its second, each written the moment its answers
    # were in (poll_ms after it) or the wait ran out.
    assert [r.elapsed_s for r in recs] == pytest.approx([start + i for i in range(12)], abs=1e-6)
    assert [r.poll_ms for r in recs] == pytest.approx(
        [(ANSWER_WAIT if i % 3 != 2 else 0.5) * 1000 for i in range(12)], abs=0.1)
    assert all(r.clients["fast"].stale_s == 0.0 for r in recs)
    # One question at a time: asked at 0, 3, 6, 9 only, not once a second.
    assert slow_mind.report_calls() == 4
    assert registry.agents["slow"].connected and all(r.clients["slow"].connected for r in recs)


def test_a_late_agent_is_counted_with_its_last_report_marked_stale_with_its_age(
        clock: Clock, fast_and_slow: FastAndSlow) -> None:
    _, _, slow_mind, timeline, collector = fast_and_slow

    # Second 0: both answer in time. Seconds 1-3: the slow one is silent; it answers in second 4.
    def each(i: int) -> None:
        if i in (0, 4):
            slow_mind.release()

    seconds(collector, clock, 6, each=each)
    recs = lines(timeline)
    slow_rows = [r.clients["slow"] for r in recs]
    # Second 0: asked at 0, answered at 0.5 (before the wait ran out): fresh.
    assert slow_rows[0].stale_s == 0.0 and recs[0].stale == ()
    # Seconds 1-3: its question of second 1 is late; its report of 100.5 is counted, and aged.
    for i in (1, 2, 3):
        assert recs[i].stale == ("slow",)
        assert slow_rows[i].stale_s == pytest.approx(i + ANSWER_WAIT - 0.5)
        assert slow_rows[i].open == 5 and recs[i].client.open == 15
    # Second 4: its answer lands at 4.5, within that line's wait: fresh again.
    assert slow_rows[4].stale_s == 0.0 and recs[4].stale == ()


def test_the_console_the_live_view_and_metrics_say_which_agent_is_stale(
        registry: Registry, clock: Clock, events: EventLog, tmp_path: Path) -> None:
    from prometheus_client.exposition import generate_latest

    from connscale.metrics.prometheus import TimelineCollector, registry_for
    from connscale.metrics.render import format_stats
    from tests.support.scrape import samples

    registry.register("fast", Mind(report_packed=Agent(1, open_=1).answer), info())
    slow_mind = SlowMind(Agent(1, open_=2))
    registry.register("slow", slow_mind, info())
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, timeline=timeline)
    seconds(collector, clock, 3, each=lambda i: slow_mind.release() if i == 0 else None)
    last = lines(timeline)[-1]
    assert last.clients["slow"].stale_s == pytest.approx(2.2)
    text = format_stats(last)
    assert "client  slow: connected (stale 2.2s)" in text and "client  fast: connected target" in text
    metrics = TimelineCollector()
    metrics.observe(last)
    m = samples(generate_latest(registry_for(metrics)).decode())
    assert m[("connscale_agent_report_age_seconds", (("agent", "slow"),))] == pytest.approx(2.2)
    assert m[("connscale_agent_report_age_seconds", (("agent", "fast"),))] == 0.0


def test_a_late_answer_is_counted_once_in_the_line_written_after_it_lands(
        clock: Clock, fast_and_slow: FastAndSlow) -> None:
    fast, slow, slow_mind, timeline, collector = fast_and_slow
    # The slow agent's answers land just after lines 2 and 5 were written (their wait ran out).
    for i in range(8):
        collector.tick()
        clock.advance(ANSWER_WAIT)  # line i is written here
        if i in (2, 5):
            clock.advance(0.1)
            slow_mind.release()
            clock.advance(1.0 - ANSWER_WAIT - 0.1)
        else:
            clock.advance(1.0 - ANSWER_WAIT)
    recs = lines(timeline)

    # Every RTT sent is in exactly one line's histogram: none lost, none twice.
    assert sum(rtt_count(r) for r in recs) == fast.sent_rtts + slow.sent_rtts
    per_line = [rtt_count(r) for r in recs]
    # The slow agent's RTTs (7 a report) come in the line after its answer landed.
    assert per_line == [100, 100, 100, 107, 100, 100, 107, 100]
    # Counters are cumulative: the totals jump once, to the agent's own count, never beyond it.
    pings = [r.client.pings for r in recs]
    assert pings == sorted(pings) and pings[-1] == fast.pings + slow.pings
    assert [r.clients["slow"].stale_s == 0.0 for r in recs] == [
        False, False, False, True, False, False, True, False]
    # Asked at 0 (answered at 2.8), at 4 (its report of 2.8 was still fresh at 3;
    # answered at 5.8), and at 7.
    assert slow_mind.report_calls() == 3


def test_an_agent_that_never_answers_is_still_marked_lost_and_the_lines_go_on(
        registry: Registry, clock: Clock, events: EventLog, tmp_path: Path) -> None:
    fast = Agent(100, open_=10)
    registry.register("fast", Mind(report_packed=fast.answer), info())
    hung = Mind(report_packed=None)  # type: ignore[arg-type]  # it never answers: SIGSTOP, a cut cable
    registry.register("hung", hung, info())
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, timeline=timeline, lost_after=5.0)
    seconds(collector, clock, 9)
    recs = lines(timeline)
    assert len(recs) == 9
    agent = registry.agents["hung"]
    assert not agent.connected and hung.broker.transport.aborted
    assert agent.lost_reason.startswith("no answer for 5 s")
    # Meanwhile: reported stale (no report yet), then lost, with its reason, in the lines.
    assert recs[0].stale == ("hung",) and recs[0].clients["hung"].stale_s is None
    assert recs[-1].clients["hung"].lost_reason == agent.lost_reason and recs[-1].stale == ()
    assert any("agent hung lost: no answer for 5 s" in e for r in recs for e in r.events)
    # One question only, until it timed out and the agent was lost.
    assert sum(1 for m, _ in hung.calls if m == "report_packed") == 1
    assert all(r.clients["fast"].stale_s == 0.0 for r in recs)


def test_the_stats_poll_and_the_tick_share_questions_and_a_fresh_report(registry: Registry, clock: Clock,
                                                                        events: EventLog) -> None:
    agent = Agent(1, open_=3)
    mind = Mind(report_packed=agent.answer)
    registry.register("a", mind, info())
    collector = Collector(clock, registry, events)
    result(collector.tick())
    clock.advance(0.3)
    result(collector.poll())  # `ctl stats` / `connscale run` right after the tick: that report will do
    assert sum(1 for m, _ in mind.calls if m == "report_packed") == 1
    assert collector.stats().clients["a"].stale_s == 0.0
    clock.advance(0.7)
    result(collector.poll())
    assert sum(1 for m, _ in mind.calls if m == "report_packed") == 2


# ---------------------------------------------------------------- the supervisor, inside an agent and the hub


def snapshot(open_: int, rtt_n: int) -> dict[str, Any]:
    from connscale.records.packed import pack

    return pack({**Snapshot(open=open_, opened=open_).to_dict(), "rtt": rtts(rtt_n)})


def test_a_supervisor_poll_waits_for_a_slow_worker_only_as_long_as_it_is_told(clock: Clock) -> None:
    got: list[str] = []
    sup = Supervisor(clock, "client", {}, "t", on_rtt=got.append)
    child = HeldChild()
    slot = Slot(0, child=child, alive=True, pid=4242, answered_at=clock.seconds())  # type: ignore[arg-type]
    sup.slots.append(slot)

    first = sup.poll(0.4)
    clock.advance(0.4)
    assert first.called  # gave up waiting; the question goes on
    second = sup.poll(0.4)
    assert len(child.asked) == 1  # not asked again while its answer is late
    clock.advance(0.4)
    assert second.called and slot.last is None
    child.asked[0].callback(snapshot(9, 4))  # the late answer lands: once, in `last` and the RTTs
    assert slot.last is not None and slot.last["open"] == 9 and len(got) == 1
    assert sup.workers()[0].silent_s == 0.0
    clock.advance(0.3)
    sup.poll(0.4, fresh=0.5)
    assert len(child.asked) == 1  # its answer of 0.3 s ago will do for the hub's tick
    sup.poll(0.4)
    assert len(child.asked) == 2  # answered: asked again
    child.asked[1].callback(snapshot(9, 0))
    clock.advance(0.5)
    sup.poll(0.4, fresh=0.5)
    assert len(child.asked) == 3  # no longer fresh


def test_an_agent_answers_the_hub_within_its_report_wait_despite_a_silent_worker(clock: Clock) -> None:
    from connscale.records.packed import unpack
    from connscale.control.agent import REPORT_WAIT, AgentMind

    class FakeAgent:
        supervisor = Supervisor(clock, "client", {}, "t")

        def report(self) -> AgentReport:
            return AgentReport(totals=self.supervisor.totals(), workers=tuple(self.supervisor.workers()))

    agent = FakeAgent()
    child = HeldChild()
    agent.supervisor.slots.append(Slot(0, child=child, alive=True, pid=4242,  # type: ignore[arg-type]
                                       answered_at=clock.seconds()))
    d = AgentMind(agent).remote_report_packed()  # type: ignore[arg-type]
    assert not d.called
    clock.advance(REPORT_WAIT)
    report = AgentReport.from_wire(unpack(result(d)))
    assert report.workers[0].silent_s == REPORT_WAIT  # the worker's row says how old its numbers are
    assert REPORT_WAIT < ANSWER_WAIT < 1.0


def test_the_hubs_loop_ticks_every_second_even_while_a_line_waits(clock: Clock) -> None:
    from connscale.control.hub import HubService

    class SlowController:
        ticks = 0

        def tick(self) -> defer.Deferred[None]:
            self.ticks += 1
            return defer.Deferred()  # never fires: a line that never finishes

    controller = SlowController()
    hub = HubService(clock, controller, None, 0)  # type: ignore[arg-type]
    hub._tick.start(1.0, now=False)
    clock.advance(1.0)
    for _ in range(4):
        clock.advance(1.0)
    hub._tick.stop()
    assert controller.ticks == 5


def test_each_agents_row_carries_its_own_second_and_a_live_answer_the_last_lines(
        registry: Registry, clock: Clock, events: EventLog, tmp_path: Path) -> None:
    busy, quiet = Agent(40, open_=4), Agent(3, open_=1)
    registry.register("busy", Mind(report_packed=busy.answer), info())
    registry.register("quiet", Mind(report_packed=quiet.answer), info())
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, timeline=timeline)
    seconds(collector, clock, 2)
    last = lines(timeline)[-1]
    for name, pings in (("busy", 40), ("quiet", 3)):
        row = last.clients[name]
        assert decode_histogram(row.rtt_hist).get_total_count() == pings
        assert row.rtt_window_ms is not None and row.rtt_window_ms.p50 == pytest.approx(1.5, abs=0.01)
    # Between two lines: each row shows the last line's second, without its histogram.
    live = collector.stats()
    assert live.clients["busy"].rtt_window_ms == last.clients["busy"].rtt_window_ms
    assert live.clients["busy"].rtt_hist == "" and live.window_elapsed_s == last.elapsed_s
