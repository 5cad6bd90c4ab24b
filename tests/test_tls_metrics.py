"""TLS handshake times travel like RTTs: worker snapshot -> supervisor -> agent report -> hub's timeline.

Fake clock and fake workers/agents: what each hop carries and how the hub merges it,
one histogram per timeline second (`handshake_hist`) and the run's so far (`handshake_ms`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from connscale.records.packed import pack
from connscale.control.collect import Collector, EventLog
from connscale.control.records import AgentReport
from connscale.control.registry import Registry
from connscale.metrics.buckets import RttBuckets
from connscale.metrics.counters import Counters
from connscale.metrics import handshakes
from connscale.metrics.handshakes import ConnectRate, HandshakeMs
from connscale.metrics.histograms import encode_histogram, new_histogram
from connscale.metrics.snapshot import Snapshot, snapshot_from_wire, sum_snapshots
from connscale.metrics.timeline import Timeline, read_timeline
from connscale.procs.supervisor import Slot, Supervisor
from tests.support.minds import Mind, info
from tests.support.ticks import HeldChild, seconds


def handshake_hist(n: int, us: int) -> str:
    h = new_histogram()
    h.record_value(us, n)
    return encode_histogram(h)


def test_a_snapshot_carries_the_handshakes_since_the_last_one_and_resumptions_in_all() -> None:
    c = Counters()
    for us in (800, 900, 5000):
        c.handshake.record(us)
    c.resumed = 2
    first = c.snapshot()
    assert first.resumed == 2 and first.handshake
    buckets = RttBuckets()
    buckets.add_encoded(first.handshake)
    assert buckets.total() == 3
    second = c.snapshot()
    assert second.handshake == "" and second.resumed == 2  # interval histogram, cumulative count
    wire = snapshot_from_wire(first.to_dict())
    assert wire.handshake == first.handshake and wire.resumed == 2
    assert "handshake" not in first.counts()  # the histogram travels apart from the counts
    assert sum_snapshots([first, second]).resumed == 4


def test_the_supervisor_hands_each_workers_handshakes_to_its_listeners_once(clock: Clock) -> None:
    rtts: list[str] = []
    handshakes: list[str] = []
    sup = Supervisor(clock, "client", {}, "t", on_rtt=rtts.append)
    sup.handshake_listeners.append(handshakes.append)
    child = HeldChild()
    sup.slots.append(Slot(0, child=child, alive=True, pid=4242, answered_at=clock.seconds()))  # type: ignore[arg-type]
    c = Counters()
    c.handshake.record(1200)
    sup.poll(0.4)
    child.asked[0].callback(pack(c.snapshot().to_dict()))
    assert len(handshakes) == 1 and rtts == []
    clock.advance(1)
    sup.poll(0.4)
    child.asked[1].callback(pack(c.snapshot().to_dict()))  # nothing new: nothing passed on
    assert len(handshakes) == 1


def test_the_hub_merges_every_agents_handshakes_into_one_histogram_a_second(
        clock: Clock, events: EventLog, registry: Registry, tmp_path: Path) -> None:
    clock.advance(100)
    sent = {"a": 0, "b": 0}

    def agent(name: str, n: int, us: int) -> Any:
        def answer() -> dict[str, Any]:
            sent[name] += n
            return AgentReport(totals=Snapshot(open=sent[name], opened=sent[name], resumed=1),
                               handshake=handshake_hist(n, us)).to_wire()
        return answer

    registry.register("a", Mind(report_packed=agent("a", 30, 2000)), info())
    registry.register("b", Mind(report_packed=agent("b", 10, 40_000)), info())
    timeline = Timeline(tmp_path)
    collector = Collector(clock, registry, events, timeline=timeline)
    seconds(collector, clock, 3)
    timeline.close()
    lines = list(read_timeline(timeline.path))
    per_second = [h for h in (r.handshake_histogram() for r in lines) if h is not None]
    assert [h.get_total_count() for h in per_second] == [40] * len(per_second) and len(per_second) >= 2
    # 30 at 2 ms and 10 at 40 ms each second: the merge keeps both.
    assert per_second[0].get_value_at_percentile(50) < 2100 and per_second[0].get_max_value() >= 39_000
    run = lines[-1].handshake_ms
    assert run.p50 is not None and 1.9 < run.p50 < 2.1 and run.max is not None and 39 < run.max < 41
    assert lines[-1].client.resumed == 2
    # The run's figures, from the timeline alone (summary.json's handshake_ms and tls_connect_rate).
    assert handshakes.handshake_ms(lines).count == 40 * len(per_second)
    assert handshakes.connect_rate(lines) == ConnectRate(40.0, 40.0)


def test_without_tls_the_timeline_says_no_handshakes(clock: Clock, events: EventLog, registry: Registry,
                                                    tmp_path: Path) -> None:
    registry.register("a", Mind(report_packed=lambda: AgentReport(totals=Snapshot(open=1)).to_wire()), info())
    timeline = Timeline(tmp_path)
    seconds(Collector(clock, registry, events, timeline=timeline), clock, 2)
    timeline.close()
    last = list(read_timeline(timeline.path))[-1]
    assert last.handshake_hist == "" and last.handshake_ms.p50 is None
    assert handshakes.handshake_ms([last]) == HandshakeMs() and handshakes.connect_rate([last]) == ConnectRate()
