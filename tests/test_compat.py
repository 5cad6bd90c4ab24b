"""Every private name connscale relies on still exists and still means what we use it for.

connscale/compat/ is the only module that touches them (tests/test_layers.py
also checks that no other module does); a Twisted release that renames or
repurposes one fails here, by name.
"""

from __future__ import annotations

import re
import select
import socket
import tokenize
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver

import twisted
from connscale.compat import TESTED_TWISTED
from connscale.compat.epoll import (
    is_epoll_reactor,
    reactor_dispatch,
    reactor_epoll,
    reactor_selectables,
    replace_main_loop,
    replace_poll,
)
from connscale.compat.lines import PresizedLineReceiver
from connscale.compat.sockets import raw_accept

ROOT = Path(__file__).resolve().parent.parent


class Reader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reads = 0

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self.reads += 1

    def logPrefix(self) -> str:
        return "reader"

    def connectionLost(self, reason: object) -> None:
        pass


def test_the_reactors_epoll_and_selectables(reactor) -> None:
    assert is_epoll_reactor(reactor)
    poller = reactor_epoll(reactor)
    assert isinstance(poller, select.epoll) and not poller.closed
    a, b = socket.socketpair()
    reader = Reader(a.fileno())
    reactor.addReader(reader)
    # _selectables maps the fd to what was added; _poller is what reports it.
    assert reactor_selectables(reactor)[a.fileno()] is reader
    b.send(b"x")
    assert (a.fileno(), select.EPOLLIN) in [(fd, ev & select.EPOLLIN) for fd, ev in poller.poll(1)]
    # _doReadOrWrite(selectable, fd, event) turns a read event into doRead().
    reactor_dispatch(reactor)(reader, a.fileno(), select.EPOLLIN)
    assert reader.reads == 1
    reactor.removeReader(reader)
    assert a.fileno() not in reactor_selectables(reactor)
    a.close()
    b.close()


def test_the_timer_state_the_lean_main_loop_reads(reactor) -> None:
    # A new call waits in _newTimedCalls until _insertNewDelayedCalls moves it to the
    # heap _pendingTimedCalls, ordered by .time; stop() sets _justStopped for
    # runUntilCurrent, which fires "shutdown"; _started and running are the loop's flags.
    call = reactor.callLater(5, lambda: None)
    assert reactor._newTimedCalls == [call] and call not in reactor._pendingTimedCalls
    reactor._insertNewDelayedCalls()
    assert reactor._newTimedCalls == [] and reactor._pendingTimedCalls[0] is call
    assert abs(call.time - reactor.seconds() - 5) < 1
    assert reactor._started is False and reactor.running is False and reactor._justStopped is False
    assert reactor.threadCallQueue == []
    call.cancel()


def test_the_lean_main_loop_replaces_only_this_reactors(reactor) -> None:
    from twisted.internet.epollreactor import EPollReactor

    turns: list[object] = []

    def poll_once(timeout: float | None) -> None:
        turns.append(timeout)
        if turns.count(None) == 1 and timeout is None:
            reactor.stop()
        assert len(turns) < 100

    replace_main_loop(reactor, poll_once)
    assert EPollReactor.mainLoop is not reactor.mainLoop.__func__
    reactor.callLater(0, lambda: turns.append("timer"))
    reactor.run(installSignalHandlers=False)
    # The due timer ran before the first wait, which then had no timer to wait for;
    # once stopped, the loop only turned until the shutdown had run.
    assert turns[:2] == ["timer", None] and set(turns[2:]) <= {0.0}


def test_replacing_the_poll_changes_only_this_reactor(reactor) -> None:
    seen = []
    replace_poll(reactor, lambda r, timeout: seen.append((r, timeout)))
    reactor.doIteration(0.25)  # what ReactorBase.mainLoop calls each turn
    reactor.doPoll(0.5)
    assert seen == [(reactor, 0.25), (reactor, 0.5)]
    assert EPollReactor.doIteration is EPollReactor.doPoll  # the class is untouched


def test_line_receiver_keeps_partial_lines_where_we_look() -> None:
    plain = LineReceiver()
    plain.makeConnection(StringTransport())
    plain.dataReceived(b"Pi")
    # Twisted's own names for its state: the ones PresizedLineReceiver presets.
    assert plain._buffer == b"Pi" and plain._busyReceiving is False
    lines = []
    ours = PresizedLineReceiver()
    ours.lineReceived = lines.append  # type: ignore[method-assign]
    ours.makeConnection(StringTransport())
    assert ours.pending_line == b""
    ours.dataReceived(b"Pi")
    assert ours.pending_line == b"Pi" and lines == []
    ours.dataReceived(b"ng\r\nPo")
    assert lines == [b"Ping"] and ours.pending_line == b"Po"
    # Preset, not added later: instances share CPython's compact attribute storage.
    assert {"_buffer", "_busyReceiving"} <= set(vars(PresizedLineReceiver()))


def test_raw_accept_returns_a_bare_fd() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    fd, addr = raw_accept(listener)()
    assert isinstance(fd, int) and addr == client.getsockname()
    server = socket.socket(fileno=fd)
    client.send(b"hi")
    assert server.recv(10) == b"hi"
    for s in (server, client, listener):
        s.close()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def test_the_manholes_deferred_display_hook_still_shows_what_we_hand_it() -> None:
    from twisted.conch import manhole

    from connscale.compat.manhole import ResultShapingInterpreter

    assert "_cbDisplayDeferred" in vars(manhole.ManholeInterpreter)

    class Shouting(ResultShapingInterpreter):
        def shown(self, result: object) -> object:
            return str(result).upper()

    class Handler:
        def __init__(self) -> None:
            self.written: list[str] = []

        def addOutput(self, text: str, asynchronous: bool = False) -> None:
            self.written.append(text)

    handler = Handler()
    interpreter = Shouting(handler, {})
    d: defer.Deferred[str] = defer.Deferred()
    interpreter.displayhook(d)   # a pending Deferred is numbered and shown when it fires
    d.callback("quiet")
    assert any("QUIET" in line for line in handler.written), handler.written
    assert d.result == "quiet"   # what the Deferred carries is untouched


def test_the_installed_twisted_is_inside_the_tested_range() -> None:
    low, high = (_version(b) for b in TESTED_TWISTED)
    assert low <= _version(twisted.__version__) < high, (twisted.__version__, TESTED_TWISTED)


def test_pyproject_declares_the_tested_range() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    declared = re.search(r'"twisted\[[^\]]*\]([^"]*)"', text)
    assert declared is not None
    assert declared.group(1).replace(" ", "") == ",".join(TESTED_TWISTED)


def _attribute_names(path: Path) -> set[str]:
    """Names used after a dot in the code (strings and comments left out)."""
    out, previous = set(), None
    with open(path, "rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type == tokenize.NAME and previous == ".":
                out.add(tok.string)
            previous = tok.string if tok.type == tokenize.OP else None
    return out


def test_no_module_outside_compat_touches_those_private_names() -> None:
    names = {"_poller", "_selectables", "_doReadOrWrite", "_buffer", "_busyReceiving", "_accept",
             "_tempDataBuffer", "_writeDisconnected", "_fromListeningDescriptor", "_logger", "_reads", "_writes",
             "_cbDisplayDeferred", "_pendingTimedCalls", "_newTimedCalls", "_justStopped", "_started",
             "_insertNewDelayedCalls"}
    offenders = []
    for path in (ROOT / "connscale").rglob("*.py"):
        if "compat" not in path.parts:
            offenders += [f"{path.relative_to(ROOT)}: .{name}" for name in sorted(names & _attribute_names(path))]
    assert offenders == []


# ------------------------------------------------- a worker's lean Twisted import

LEAN_PROBE = r"""
import json, sys, warnings
from connscale.compat.startup import import_twisted_lean, skip_unused_modules
skip_unused_modules()
import_twisted_lean()
out = {"before": sorted(m for m in ("asyncio", "decimal", "html", "http") if m in sys.modules)}

from twisted.internet import defer
from twisted.spread import jelly

# Callback results and ensureDeferred still tell coroutines from plain values.
async def two():
    return 2
seen = []
defer.ensureDeferred(two()).addCallback(seen.append)
@defer.inlineCallbacks
def gen():
    x = yield two()  # a coroutine yielded: defer's iscoroutine() must say so
    y = yield defer.succeed(1)
    return x + y
gen().addCallback(seen.append)
try:
    defer.ensureDeferred(5)
except defer.NotACoroutineError:
    seen.append("not a coroutine")
out["seen"] = seen

# jelly: plain data goes through without decimal; a Decimal that arrives is a real one.
out["plain"] = jelly.unjelly(jelly.jelly({"a": [1, 2.5, "x"]}))
made = jelly.unjelly([b"decimal", 15, -1])
out["unjellied"] = [type(made).__module__, str(made)]
import decimal
out["decimal_real"] = type(made) is decimal.Decimal
out["roundtrip"] = str(jelly.unjelly(jelly.jelly(decimal.Decimal("2.25"))))

# twisted.python.compat's escape is html.escape's answer; the real html imports later.
from twisted.python import compat
warnings.simplefilter("ignore")
out["escape"] = [compat.escape("<a href='x'>&"), compat.escape("'", quote=False)]
import html
out["html_real"] = html.escape("<") == "&lt;" and "html.entities" in sys.modules

# The real asyncio is importable afterwards, and Deferreds meet its futures.
import asyncio
loop = asyncio.new_event_loop()
fut = loop.create_future()
got = []
defer.Deferred.fromFuture(fut).addCallback(got.append)
fut.set_result(7)
loop.run_until_complete(asyncio.sleep(0))
d = defer.Deferred()
f2 = d.asFuture(loop)
d.callback(8)
got.append(loop.run_until_complete(f2))
loop.close()
out["asyncio"] = got
print(json.dumps(out))
"""


def test_twisted_imported_lean_works_without_asyncio_and_decimal_loaded() -> None:
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", LEAN_PROBE], env=env, capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["before"] == []
    assert res["seen"] == [2, 3, "not a coroutine"]
    assert res["plain"] == {"a": [1, 2.5, "x"]}
    assert res["unjellied"] == ["decimal", "1.5"] and res["decimal_real"]
    assert res["roundtrip"] == "2.25"
    assert res["asyncio"] == [7, 8]
    assert res["escape"] == ["&lt;a href=&#x27;x&#x27;&gt;&amp;", "'"] and res["html_real"]


def _imported_names(source: str, module: str) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            names.update(a.name for a in node.names)
    return names


def test_what_the_stand_ins_provide_is_what_twisted_takes() -> None:
    """A Twisted that takes more from asyncio (or decimal) still works (the stand-in
    answers from the real module) but loses the saving: caught here, by name."""
    import inspect as _inspect

    from twisted.internet import defer
    from twisted.python import compat
    from twisted.spread import jelly

    from connscale.compat.startup import DEFER_NEEDS, _iscoroutine

    assert _imported_names(_inspect.getsource(defer), "asyncio") == set(DEFER_NEEDS)
    compat_source = _inspect.getsource(compat)
    assert _imported_names(compat_source, "html") == {"escape"}
    assert _imported_names(compat_source, "http") == {"cookiejar"}
    jelly_source = _inspect.getsource(jelly)
    assert _imported_names(jelly_source, "decimal") == set()
    assert set(re.findall(r"decimal\.(\w+)", jelly_source)) == {"Decimal"}

    async def coro() -> None:
        pass

    c = coro()
    assert _iscoroutine(c) and _iscoroutine(c)  # the second from the type cache
    c.close()
    assert not _iscoroutine(1) and not _iscoroutine(x for x in ())


def test_a_stand_in_asked_for_more_brings_the_real_module() -> None:
    import sys

    from connscale.compat.startup import _AsyncioForDefer

    stand_in = _AsyncioForDefer("asyncio")
    import asyncio

    assert stand_in.get_event_loop_policy is asyncio.get_event_loop_policy
    assert sys.modules["asyncio"] is asyncio
    with pytest.raises(AttributeError):
        stand_in.__path__  # noqa: B018
