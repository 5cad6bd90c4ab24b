"""The hot path's RTT buckets agree with HdrHistogram and survive the trip to the parent."""

import random

from connscale.metrics.buckets import LENGTH, MAX_US, RttBuckets, index, lowest
from connscale.metrics.histograms import (
    RttAccumulator,
    buckets_to_histogram,
    encode_histogram,
    new_histogram,
)


def test_every_bucket_holds_the_values_that_map_to_it():
    for idx in range(LENGTH - 1):
        assert index(lowest(idx)) == idx
        assert index(lowest(idx + 1) - 1) == idx  # its highest value
    assert index(MAX_US + 12345) == index(MAX_US) == LENGTH - 1


def test_percentiles_equal_an_hdrhistogram_fed_the_same_values():
    rng = random.Random(7)
    values = [int(rng.lognormvariate(7, 1.5)) + 1 for _ in range(20_000)] + [1, 255, 256, 511, 512, 10**8]
    buckets, direct = RttBuckets(), new_histogram()
    for v in values:
        buckets.record(v)
        direct.record_value(v)
    via = buckets_to_histogram(buckets)
    assert via.get_total_count() == direct.get_total_count() == len(values)
    for p in (0, 1, 10, 50, 90, 99, 99.9, 100):
        assert via.get_value_at_percentile(p) == direct.get_value_at_percentile(p), p


def test_encoded_buckets_add_up_in_the_parent_and_mix_with_encoded_histograms():
    a, b = RttBuckets(), RttBuckets()
    for v in (100, 2000, 2000, 30_000):
        a.record(v)
    b.record(2000)
    acc = RttAccumulator()
    acc.add(a.encode())
    acc.add(b.encode())
    agent_report = new_histogram()
    agent_report.record_value(500_000)
    acc.add(encode_histogram(agent_report))  # what an agent sends a hub
    window = acc.take_window()
    assert window.get_total_count() == 6
    assert window.get_value_at_percentile(50) == buckets_to_histogram(a).get_value_at_percentile(50)
    assert acc.take_window().get_total_count() == 0  # a window is taken once
    assert acc.total.get_total_count() == 6  # the total keeps everything
    assert acc.total.get_max_value() >= 500_000


def test_without_a_total_only_the_window_is_kept():
    b = RttBuckets()
    b.record(42)
    acc = RttAccumulator(keep_total=False)
    acc.add(b.encode())
    assert acc.take_window().get_total_count() == 1
    assert acc.total.get_total_count() == 0


def test_reset_keeps_the_list_the_pool_writes_to():
    b = RttBuckets()
    counts = b.counts
    b.record(1000)
    b.reset()
    assert counts is b.counts and not b and b.total() == 0


def test_pairs_are_every_non_empty_bucket_in_order_with_counts_clamped_to_32_bits():
    import random

    from connscale.metrics.buckets import LENGTH, RttBuckets

    rng = random.Random(9)
    b = RttBuckets()
    for _ in range(500):
        b.counts[rng.randrange(LENGTH)] += rng.randrange(1, 1000)
    b.counts[0] = 1
    b.counts[LENGTH - 1] = 1 << 40
    expected = []
    for i, n in enumerate(b.counts):
        if n:
            expected += [i, min(n, 0xFFFFFFFF)]
    assert list(b.pairs()) == expected
    back = RttBuckets()
    back.add_encoded(b.encode())
    assert back.counts == [min(n, 0xFFFFFFFF) for n in b.counts]
    assert list(RttBuckets().pairs()) == [] and RttBuckets().encode() == "b1:"
