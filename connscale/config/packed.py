"""Big PB payloads as one JSON string.

Perspective Broker encodes a structure element by element (jelly, then
Banana), and Banana's decoder copies the rest of its buffer once per element:
an agent's report with 53 worker rows (~15 KB, ~1,500 elements) took 86 ms to
encode and decode, once a second per agent, and the hub's stats with both
sides' rows twice that. The same data as one JSON string is one Banana
element: 0.15 ms (bench/README.md, "Reporting at a million"). Calls whose
answer is a report use a `*_packed` variant that answers `pack(data)`; the
receiver `unpack`s it, and also accepts the plain structure an older peer
sends, then checks it with its record as before.
"""

from __future__ import annotations

import json
from typing import Any

#: Larger than any report connscale makes (a 256-worker agent is ~80 KB).
MAX_PACKED = 8 * 2**20


class PackError(ValueError):
    """A packed payload that is not one."""


def pack(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def unpack(value: Any) -> Any:
    """The structure a peer sent, packed or not."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return value
    if len(value) > MAX_PACKED:
        raise PackError(f"a packed payload of {len(value)} bytes is too large")
    try:
        return json.loads(value)
    except ValueError as e:
        raise PackError(f"not a packed payload: {e}") from None
