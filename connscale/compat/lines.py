"""`LineReceiver`'s private state, for a line protocol with a one-compare fast path."""

from __future__ import annotations

import operator

from twisted.protocols.basic import LineReceiver


class PresizedLineReceiver(LineReceiver):
    """A `LineReceiver` whose private state exists from construction.

    Twisted creates `_buffer` and `_busyReceiving` on the first
    `dataReceived`; an attribute added after thousands of instances exist
    gives every instance a full dict instead of CPython's shared-key storage.
    `pending_line` is the part of a line received so far (b"" when none):
    a server may answer a whole `Ping\\n` at once only when nothing is pending.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._busyReceiving = False

    # A C-level getter: read once per ping, no Python frame.
    pending_line = property(operator.attrgetter("_buffer"))
