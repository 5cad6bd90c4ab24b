"""plan: worker counts, water filling, shrinking, route quotas and assignments."""

from __future__ import annotations

import math
import random

import pytest

from connscale.control import plan
from connscale.net.routes import Route


def routes(n_ports: int = 1, sources: tuple[str, ...] = ()) -> list[Route]:
    srcs = list(sources) or [None]
    return [Route(s, "127.0.0.1", 8989 + p, 1) for p in range(n_ports) for s in srcs]


# ---------------------------------------------------------------- worker counts


@pytest.mark.parametrize(
    "budget, expected",
    [(19900, 18905), (100, 95), (1, 1), (0, 1), (-5, 1), (21, 19)],
)
def test_per_worker_fills_to_95_percent_and_at_least_one(budget: int, expected: int) -> None:
    assert plan.per_worker(budget) == expected


@pytest.mark.parametrize(
    "target, budget, configured, expected",
    [
        (25000, 19900, "auto", 2),  # 25000 / 18905 -> 2
        (18905, 19900, "auto", 1),  # exactly one worker's fill
        (18906, 19900, "auto", 2),
        (0, 19900, "auto", 1),  # never zero workers on auto
        (1, 1, "auto", 1),
        (1_000_000, 19900, "auto", math.ceil(1_000_000 / 18905)),
        (25000, 19900, 7, 7),  # configured wins, even when too few
        (25000, 19900, "3", 3),
        (25000, 19900, 0, 0),  # 0 = in the agent process
    ],
)
def test_client_workers(target: int, budget: int, configured: int | str, expected: int) -> None:
    assert plan.client_workers(target, budget, configured) == expected


@pytest.mark.parametrize(
    "expected_conns, budget, cores, configured, want",
    [
        (0, 19900, 4, "auto", 4),  # every core even when idle
        (100_000, 19900, 4, "auto", 6),  # 100000 / 18905 -> 6 > 4 cores
        (10_000, 19900, 8, "auto", 8),
        (18905 * 3, 19900, 1, "auto", 3),
        (18905 * 3 + 1, 19900, 1, "auto", 4),
        (100_000, 19900, 4, 2, 2),
        (100_000, 19900, 4, 0, 0),
    ],
)
def test_server_workers(expected_conns: int, budget: int, cores: int, configured: int | str, want: int) -> None:
    assert plan.server_workers(expected_conns, budget, cores, configured) == want


# ---------------------------------------------------------------- split


def check_split(total: int, caps: list[int], out: list[int]) -> None:
    assert len(out) == len(caps)
    assert sum(out) == max(0, min(total, sum(c for c in caps if c > 0)))
    for o, c in zip(out, caps):
        assert 0 <= o <= max(0, c)
    # Water filling: nobody sits more than one above a worker that still has room.
    for i, (o, c) in enumerate(zip(out, caps)):
        if o < c:
            assert all(other <= o + 1 for other in out), (total, caps, out, i)


@pytest.mark.parametrize(
    "total, caps, expected",
    [
        (10, [10, 10], [5, 5]),
        (5, [10, 10, 10], [2, 2, 1]),
        (10, [2, 10, 10], [2, 4, 4]),
        (30, [10, 10, 10], [10, 10, 10]),
        (100, [10, 10, 10], [10, 10, 10]),  # beyond capacity: capped, rest dropped
        (0, [10, 10], [0, 0]),
        (7, [], []),
        (7, [0, 0], [0, 0]),
        (7, [0, 10], [0, 7]),
        (4, [1, 1, 1, 100], [1, 1, 1, 1]),
        (10, [1, 1, 1, 100], [1, 1, 1, 7]),
        (1, [5, 5, 5], [1, 0, 0]),
        (-3, [5, 5], [0, 0]),
    ],
)
def test_split_examples(total: int, caps: list[int], expected: list[int]) -> None:
    out = plan.split(total, caps)
    assert out == expected
    check_split(total, caps, out)


def test_split_properties_random() -> None:
    rng = random.Random(1)
    for _ in range(300):
        n = rng.randint(1, 9)
        caps = [rng.choice([0, rng.randint(0, 50), rng.randint(0, 20_000)]) for _ in range(n)]
        total = rng.randint(0, sum(caps) + 50)
        check_split(total, caps, plan.split(total, caps))


# ---------------------------------------------------------------- shrink


def check_shrink(targets: list[int], n: int, out: list[int]) -> None:
    assert len(out) == len(targets)
    assert sum(out) == sum(targets) - max(0, min(n, sum(targets)))
    for o, t in zip(out, targets):
        assert 0 <= o <= t
    # Most loaded first: a worker that gave something up is not left more
    # than one below anybody else.
    for o, t in zip(out, targets):
        if o < t:
            assert all(other <= o + 1 for other in out), (targets, n, out)


@pytest.mark.parametrize(
    "targets, n, expected",
    [
        ([10, 10, 2], 5, [7, 8, 2]),
        ([10, 5], 5, [5, 5]),
        ([10, 5], 6, [4, 5]),  # level first, then both
        ([10, 5], 15, [0, 0]),
        ([10, 5], 100, [0, 0]),  # more than held: everything
        ([3, 3, 3], 2, [2, 2, 3]),
        ([100], 1, [99]),
        ([0, 0], 3, [0, 0]),
        ([12500, 12500], 5000, [10000, 10000]),
        ([7, 1, 4], 0, [7, 1, 4]),
        ([], 5, []),
    ],
)
def test_shrink_examples(targets: list[int], n: int, expected: list[int]) -> None:
    out = plan.shrink(targets, n)
    assert out == expected
    check_shrink(targets, n, out)


def test_shrink_properties_random() -> None:
    rng = random.Random(2)
    for _ in range(300):
        targets = [rng.choice([0, rng.randint(0, 30), rng.randint(0, 20_000)]) for _ in range(rng.randint(1, 8))]
        n = rng.randint(0, sum(targets) + 10)
        check_shrink(targets, n, plan.shrink(targets, n))


def test_shrink_does_not_modify_input() -> None:
    targets = [5, 9]
    plan.shrink(targets, 4)
    assert targets == [5, 9]


# ---------------------------------------------------------------- route quotas


@pytest.mark.parametrize("workers", [1, 2, 3, 7, 13])
@pytest.mark.parametrize("tuple_cap", [1, 5, 14000, 28231])
def test_route_quotas_shares_sum_to_tuple_cap(workers: int, tuple_cap: int) -> None:
    rs = routes(n_ports=2, sources=("10.0.0.1", "10.0.0.2"))
    quotas = plan.route_quotas(rs, workers, tuple_cap)
    assert len(quotas) == workers
    for per_worker in quotas:
        assert [(r.src, r.host, r.port) for r in per_worker] == [(r.src, r.host, r.port) for r in rs]
    for i in range(len(rs)):
        shares = [quotas[w][i].quota for w in range(workers)]
        assert sum(shares) == tuple_cap  # exactly the tuple's capacity, never above
        assert max(shares) - min(shares) <= 1
        assert min(shares) >= 0


def test_route_quotas_without_routes() -> None:
    assert plan.route_quotas([], 3, 14000) == [[], [], []]


def test_capacity_and_route_rows() -> None:
    rs = [Route(None, "127.0.0.1", 8989, 7), Route("10.0.0.2", "::1", 8990, 3)]
    assert plan.capacity(rs, 14000) == 28000
    assert plan.route_rows(rs) == [["", "127.0.0.1", 8989, 7], ["10.0.0.2", "::1", 8990, 3]]


# ---------------------------------------------------------------- assign


def worker_caps(assignments: list[tuple[int, list[Route]]], budgets: list[int]) -> list[int]:
    return [min(plan.per_worker(b), sum(r.quota for r in q)) for b, (_, q) in zip(budgets, assignments)]


def test_assign_fresh_even_split() -> None:
    out = plan.assign(25000, [19900, 19900], routes(n_ports=2), 14000)
    assert [t for t, _ in out] == [12500, 12500]
    for _, q in out:
        assert [r.quota for r in q] == [7000, 7000]


def test_assign_grow_keeps_current_and_spreads_increase() -> None:
    budgets = [19900, 19900, 19900]
    current = [5000, 1000, 0]
    out = plan.assign(9000, budgets, routes(n_ports=4), 14000, current)
    targets = [t for t, _ in out]
    assert sum(targets) == 9000
    assert all(t >= c for t, c in zip(targets, current))
    # The increase is spread evenly over the workers with room (no re-levelling).
    assert targets == [6000, 2000, 1000]


def test_assign_current_shorter_than_workers_pads_with_zero() -> None:
    out = plan.assign(300, [1000, 1000, 1000], routes(), 14000, current=[100])
    targets = [t for t, _ in out]
    assert targets[0] >= 100 and sum(targets) == 300


def test_assign_shrink_takes_from_most_loaded() -> None:
    out = plan.assign(20000, [19900, 19900], routes(n_ports=2), 14000, current=[12500, 12500])
    assert [t for t, _ in out] == [10000, 10000]
    out = plan.assign(6000, [19900, 19900], routes(n_ports=2), 14000, current=[9000, 1000])
    assert [t for t, _ in out] == [5000, 1000]


def test_assign_to_zero() -> None:
    out = plan.assign(0, [19900, 19900], routes(), 14000, current=[3, 4])
    assert [t for t, _ in out] == [0, 0]


def test_assign_same_target_changes_nothing() -> None:
    out = plan.assign(300, [1000, 1000], routes(n_ports=2), 14000, current=[200, 100])
    assert [t for t, _ in out] == [200, 100]


def test_assign_limited_by_routes() -> None:
    # One route of 14000 over two workers: 7000 each, whatever the fd budgets.
    budgets = [19900, 19900]
    out = plan.assign(25000, budgets, routes(), 14000)
    assert [t for t, _ in out] == [7000, 7000]
    assert [t for t, _ in out] == worker_caps(out, budgets)


def test_assign_limited_by_fd_budget() -> None:
    budgets = [1000, 2000]
    out = plan.assign(10_000, budgets, routes(n_ports=4), 14000)
    assert [t for t, _ in out] == [950, 1900]


def test_assign_properties_random() -> None:
    rng = random.Random(3)
    for _ in range(200):
        workers = rng.randint(1, 6)
        budgets = [rng.randint(50, 30000) for _ in range(workers)]
        rs = routes(n_ports=rng.randint(1, 3), sources=tuple(f"10.0.0.{i}" for i in range(rng.randint(0, 3))))
        cap = rng.choice([10, 1000, 14000])
        # A consistent "current": what the same worker count assigned before.
        current = [t for t, _ in plan.assign(rng.randint(0, 40000), budgets, rs, cap)]
        target = rng.randint(0, 40000)
        out = plan.assign(target, budgets, rs, cap, current)
        targets = [t for t, _ in out]
        caps = worker_caps(out, budgets)
        assert sum(targets) == min(target, sum(caps))
        for t, c in zip(targets, caps):
            assert 0 <= t <= c
        if target >= sum(current):
            assert all(t >= c for t, c in zip(targets, current))
        else:
            assert all(t <= c for t, c in zip(targets, current))
        for i in range(len(rs)):
            assert sum(q[i].quota for _, q in out) == cap


def test_assign_growing_worker_count_respects_new_quotas() -> None:
    # One route, cap 14000: one worker holding 10000; grow to 20000 with two workers.
    budgets = [19900, 19900]
    out = plan.assign(20000, budgets, routes(), 14000, current=[10000])
    targets = [t for t, _ in out]
    # Now each worker may hold 7000 on the one route; together never more than 14000.
    assert sum(targets) <= 14000
    assert all(t <= c for t, c in zip(targets, worker_caps(out, budgets)))


@pytest.mark.parametrize(
    "per_route_max, ephemeral, expected", [(14000, 28232, 14000), (14000, 1000, 1000), (5, 0, 1)]
)
def test_tuple_cap_never_beyond_the_ephemeral_range(per_route_max: int, ephemeral: int, expected: int) -> None:
    assert plan.tuple_cap(per_route_max, ephemeral) == expected


@pytest.mark.parametrize(
    "target, configured, expected",
    [(19900, "auto", 0), (19901, "auto", 2), (40000, "auto", 3), (100, 2, 2), (100, 0, 0)],
)
def test_standalone_workers(target: int, configured, expected: int) -> None:
    assert plan.standalone_workers(target, 19900, configured) == expected


def test_server_workers_are_capped() -> None:
    assert plan.server_workers(100_000_000, 19900, 2) == plan.MAX_WORKERS
