"""What-if patches: candidate optimisations applied in-process, for A/B runs.

Product code is never edited; the bench wrappers (_patched_twistd.py,
_gate_twistd.py) apply the patches named in $CONNSCALE_BENCH_PATCHES
(comma-separated) before twistd starts, so a gain can be measured before
anyone changes the product. Each patch says what it stands for.

  write_through    tcp.Connection.write sends at once when nothing is queued,
                   instead of always buffering + startWriting (epoll_ctl MOD)
                   and sending on the next writable event + stopWriting
                   (epoll_ctl MOD again). Falls back to Twisted's path for the
                   unsent rest, on EAGAIN, or on any error.
  direct_dispatch  EPollReactor.doPoll calls _doReadOrWrite directly instead
                   of through log.callWithLogger (logPrefix() + context push
                   per event); exceptions are still logged.
  presize_dicts    Transports get `dataBuffer`/`offset`, and line protocols
                   `_buffer`/`_busyReceiving`, at construction. Twisted sets
                   them on the first write/read; added after thousands of
                   instances exist, they overflow CPython's shared-key inline
                   attribute storage and every instance grows a full dict
                   (~760 B each).
"""

from __future__ import annotations

import errno
import os
import sys

from twisted.internet import epollreactor, tcp
from twisted.python import log as tlog

PATCHES = {}


def patch(fn):
    PATCHES[fn.__name__] = fn
    return fn


@patch
def write_through() -> None:
    original = tcp.Connection.write

    def write(self, data):  # type: ignore[no-untyped-def]
        if (
            not self.TLS
            and self.connected
            and not self._writeDisconnected
            and not self._tempDataBuffer
            and self.offset == len(self.dataBuffer)
            and type(data) is bytes
        ):
            try:
                sent = self.socket.send(data)
            except OSError as e:
                # EAGAIN: buffer it; anything else: let Twisted's own write
                # path meet the error and close the connection its usual way.
                sent = 0 if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR) else -1
            if sent == len(data):
                return
            if sent > 0:
                data = data[sent:]
        original(self, data)

    tcp.Connection.write = write


@patch
def direct_dispatch() -> None:
    def doPoll(self, timeout):  # type: ignore[no-untyped-def]
        if timeout is None:
            timeout = -1
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        drdw = self._doReadOrWrite
        get = self._selectables.get
        for fd, event in events:
            selectable = get(fd)
            if selectable is not None:
                try:
                    drdw(selectable, fd, event)
                except Exception:
                    tlog.err(None, "unhandled error in reactor dispatch")

    epollreactor.EPollReactor.doPoll = doPoll
    epollreactor.EPollReactor.doIteration = doPoll


@patch
def presize_dicts() -> None:
    from connscale import wire

    conn_init = tcp.Connection.__init__

    def init(self, *args, **kw):  # type: ignore[no-untyped-def]
        conn_init(self, *args, **kw)
        self.dataBuffer = b""
        self.offset = 0

    tcp.Connection.__init__ = init
    line_init = wire.LineServerProtocol.__init__

    def line(self, state):  # type: ignore[no-untyped-def]
        line_init(self, state)
        self._buffer = b""
        self._busyReceiving = False

    wire.LineServerProtocol.__init__ = line


def apply_from_env() -> list[str]:
    names = [n for n in os.environ.get("CONNSCALE_BENCH_PATCHES", "").split(",") if n]
    for name in names:
        if name not in PATCHES:
            sys.exit(f"unknown patch {name!r}; known: {', '.join(PATCHES)}")
        PATCHES[name]()
        sys.stderr.write(f"[bench] what-if patch applied: {name}\n")
    return names
