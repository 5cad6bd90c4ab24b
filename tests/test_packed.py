"""Big PB payloads as JSON text, whole or in pieces (records.packed)."""

import pytest
from twisted.spread import banana

from connscale.records.packed import (
    MAX_PACKED,
    MAX_PIECES,
    PIECE,
    PackError,
    pack,
    pack_pieces,
    unpack,
)


def test_round_trip_and_plain_structures_pass_through():
    data = {"totals": {"open": 3}, "workers": [{"index": 0, "load": {"cpu": 0.5}}], "rtt": "b1:00"}
    assert unpack(pack(data)) == data
    assert unpack(pack(data).encode()) == data  # PB may hand a str back as bytes
    assert unpack(pack_pieces(data)) == data and len(pack_pieces(data)) == 1
    assert unpack([p.encode() for p in pack_pieces(data)]) == data
    for plain in (data, [], [data], 7, None):  # the plain structure is no packed payload any more
        with pytest.raises(PackError):
            unpack(plain)


def test_big_payloads_are_cut_into_pieces_banana_carries():
    data = [{"src": f"127.0.{i // 250}.{i % 250}", "port": 10000 + i % 16, "quota": 1562} for i in range(20_000)]
    pieces = pack_pieces(data)
    assert len(pieces) > 1 and sum(map(len, pieces)) > banana.SIZE_LIMIT
    assert all(len(p) <= PIECE < banana.SIZE_LIMIT for p in pieces)
    assert unpack(pieces) == data
    assert unpack(pack_pieces(data, piece=PIECE // 4)) == data


def test_junk_and_oversized_payloads_are_refused_in_one_line():
    with pytest.raises(PackError, match="not a packed payload"):
        unpack("{not json")
    with pytest.raises(PackError, match="not a packed payload"):
        unpack(['{"a":', '1'])
    with pytest.raises(PackError, match="too large"):
        unpack(" " * (MAX_PACKED + 1))
    with pytest.raises(PackError, match="too large"):
        unpack([" " * PIECE] * (MAX_PIECES - 1) + [" " * (PIECE + 1)])
    with pytest.raises(PackError, match="pieces is too large"):
        unpack(["1"] * (MAX_PIECES + 1))
