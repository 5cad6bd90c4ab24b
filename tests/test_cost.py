"""connscale's own cost: cores and RSS per kind of process, per timeline second."""

from __future__ import annotations

import json

from connscale.metrics.cost import Cost, CostMeter, KindCost, describe, mean_cost, with_process


def res(cpu: float, rss: int = 1000) -> dict[str, float]:
    return {"cpu_user_s": cpu * 0.75, "cpu_system_s": cpu * 0.25, "rss_bytes": float(rss)}


def test_cores_come_from_two_readings_of_the_same_process() -> None:
    meter = CostMeter()
    first = meter.observe(10.0, [("hub", "hub", res(1.0)), ("server_workers", 11, res(5.0, 2000))])
    assert first.cores == 0.0 and first.processes == 2 and first.rss_bytes == 3000
    second = meter.observe(12.0, [("hub", "hub", res(1.2)), ("server_workers", 11, res(5.5, 2500)),
                                  ("server_workers", 12, res(0.3)), ("observers", "server", res(2.0, 700))])
    assert second.by_kind["hub"] == KindCost(cores=0.1, rss_bytes=1000, processes=1)
    # The new worker has no rate yet; the old one used 0.5 s in 2 s.
    assert second.by_kind["server_workers"] == KindCost(cores=0.25, rss_bytes=3500, processes=2)
    assert second.cores == 0.35 and list(second.by_kind) == ["hub", "server_workers", "observers"]
    # One record to JSON and back (a timeline line's `cost`).
    assert Cost.from_wire(json.loads(json.dumps(second.to_wire()))) == second


def test_a_replaced_process_under_the_same_key_starts_again_and_a_bad_reading_counts_no_cpu() -> None:
    meter = CostMeter()
    meter.observe(0.0, [("agents", "a", res(9.0))])
    again = meter.observe(1.0, [("agents", "a", res(0.5)), ("client_workers", 1, {"rss_bytes": 5.0})])
    assert again.cores == 0.0 and again.processes == 2 and again.rss_bytes == 1005


def test_the_mean_over_a_hold_skips_its_first_line_and_adds_the_run_itself() -> None:
    costs = [Cost(cores=c, rss_bytes=r, processes=3, by_kind={"hub": KindCost(c / 2, r, 3)})
             for c, r in ((0.0, 100), (0.4, 200), (0.6, 150))] + [None]
    cost = mean_cost(costs)
    assert cost is not None
    assert cost.cores == 0.5 and cost.rss_bytes == 200 and cost.seconds == 2
    assert cost.by_kind["hub"].cores == 0.25
    total = with_process(cost, "run", 0.02, 50)
    assert total.cores == 0.52 and total.rss_bytes == 250 and total.processes == 4
    assert total.by_kind["run"] == KindCost(cores=0.02, rss_bytes=50, processes=1)
    assert describe(total).startswith("connscale itself: 0.52 cores, 0 MB RSS in 4 processes (hub 0.25, run 0.02)")
    assert mean_cost([None]) is None and describe(None) == "connscale itself: not measured"
