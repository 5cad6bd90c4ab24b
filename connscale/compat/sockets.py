"""accept(2) without a Python socket object per connection."""

from __future__ import annotations

import socket
from collections.abc import Callable


def raw_accept(listener: socket.socket) -> Callable[[], tuple[int, object]]:
    """The listener's `_accept`: returns (fd, address) for a new connection.

    `socket.accept()` wraps the new fd in a `socket` object (about 90 bytes
    and a constructor call per connection); connscale's transports keep only
    the fd. CPython's `socket.accept` is itself built on this method. The new
    fd is blocking and close-on-exec.
    """
    return listener._accept  # type: ignore[attr-defined]
