"""Big PB payloads as JSON text, in pieces Banana accepts.

Perspective Broker encodes a structure element by element (jelly, then
Banana), and Banana's decoder copies the rest of its buffer once per element:
an agent's report with 53 worker rows (~15 KB, ~1,500 elements) took 86 ms to
encode and decode, once a second per agent, and the hub's stats with both
sides' rows twice that. The same data as JSON text is a handful of Banana
elements: 0.15 ms (bench/README.md, "Reporting at a million"). Calls whose
answer is a report use a `*_packed` variant that answers `pack(data)`; the
receiver `unpack`s it, and also accepts the plain structure an older peer
sends, then checks it with its record as before.

Banana refuses to send or receive one string longer than 640 KiB
(`banana.SIZE_LIMIT`): the orders for 53 workers with 640 routes each are
~940 KB of JSON. So what can grow that large (orders, an agent's report, the
hub's stats) goes through `pack_pieces`, which cuts the text into pieces of at
most `PIECE` characters (ASCII, as `json.dumps` escapes everything else, so
characters are bytes) sent as a list of strings; `pack` (one string) stays for
what a single worker sends. `unpack` takes either.
"""

from __future__ import annotations

import json
from typing import Any

#: Larger than any payload connscale makes (the orders at a million are ~1 MB).
MAX_PACKED = 8 * 2**20
#: One piece: well below Banana's 640 KiB string limit.
PIECE = 256 * 2**10
MAX_PIECES = -(-MAX_PACKED // PIECE)


class PackError(ValueError):
    """A packed payload that is not one."""


def pack(data: Any) -> str:
    """`data` as one JSON string (for payloads well below Banana's string limit)."""
    return json.dumps(data, separators=(",", ":"))


def pack_pieces(data: Any, piece: int = PIECE) -> list[str]:
    """`data` as JSON text, cut into pieces of at most `piece` characters."""
    text = pack(data)
    return [text[i:i + piece] for i in range(0, len(text), piece)]


def _text(value: Any) -> Any:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def unpack(value: Any) -> Any:
    """The structure a peer sent as packed pieces or one packed string (text or bytes).

    Anything else is refused: a peer of this protocol (control.login.PROTOCOL_VERSION)
    packs whatever it sends this way, and the plain-structure path is gone."""
    value = _text(value)
    if isinstance(value, list) and value and all(isinstance(_text(v), str) for v in value):
        if len(value) > MAX_PIECES:
            raise PackError(f"a packed payload of {len(value)} pieces is too large")
        value = "".join(_text(v) for v in value)
    if not isinstance(value, str):
        raise PackError(f"not a packed payload: expected text or a list of text pieces, got a {type(value).__name__}")
    if len(value) > MAX_PACKED:
        raise PackError(f"a packed payload of {len(value)} bytes is too large")
    try:
        return json.loads(value)
    except ValueError as e:
        raise PackError(f"not a packed payload: {e}") from None
