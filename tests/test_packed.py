"""Big PB payloads as one JSON string (config.packed)."""

import pytest

from connscale.config.packed import MAX_PACKED, PackError, pack, unpack


def test_round_trip_and_plain_structures_pass_through():
    data = {"totals": {"open": 3}, "workers": [{"index": 0, "load": {"cpu": 0.5}}], "rtt": "b1:00"}
    assert unpack(pack(data)) == data
    assert unpack(pack(data).encode()) == data  # PB may hand a str back as bytes
    assert unpack(data) is data  # an older peer's structure, checked by its record as before


def test_junk_and_oversized_payloads_are_refused_in_one_line():
    with pytest.raises(PackError, match="not a packed payload"):
        unpack("{not json")
    with pytest.raises(PackError, match="too large"):
        unpack(" " * (MAX_PACKED + 1))
