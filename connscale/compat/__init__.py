"""The one room that touches private names of other libraries.

connscale's hot path goes around a few of Twisted's (and one of CPython's)
layers to save memory and CPU per connection (see docs/design.md, "The brief's
shape and the fast path"). Every private name it relies on is named here and
nowhere else, and `tests/test_compat.py` fails when one of them disappears or
changes meaning, so a Twisted release that moves them is caught by the suite,
not by a benchmark:

- `epoll.py`: `EPollReactor._poller` (the reactor's epoll object, which our own
  sockets register with), `EPollReactor._selectables` (fd -> Twisted
  selectable) and `_doReadOrWrite` (Twisted's per-event dispatch, still used
  for Twisted's own selectables: PB pipes, the waker), and `doIteration`/
  `doPoll` (replaced on *our* reactor instance by a leaner loop).
- `lines.py`: `LineReceiver._buffer` and `_busyReceiving` (preset at
  construction, so every protocol instance keeps CPython's compact attribute
  storage, and read once per ping to see that no partial line is pending).
- `sockets.py`: CPython's `socket._accept` (accept(2) returning a bare fd, with
  no `socket` object per connection).

The Twisted versions these were checked against are in `TESTED_TWISTED` (also
the bound in pyproject.toml).
"""

from __future__ import annotations

#: Twisted releases the suite was run against (pyproject.toml carries the same bounds).
TESTED_TWISTED = (">=25.5", "<27")
