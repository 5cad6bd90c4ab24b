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

import twisted
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver

from connscale.compat import TESTED_TWISTED
from connscale.compat.epoll import (
    is_epoll_reactor,
    reactor_dispatch,
    reactor_epoll,
    reactor_selectables,
    replace_poll,
)
from connscale.compat.lines import PresizedLineReceiver
from connscale.compat.sockets import raw_accept
from tests.support.loop import reactor  # noqa: F401  (fixture)

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


def test_the_reactors_epoll_and_selectables(reactor) -> None:  # noqa: F811
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


def test_replacing_the_poll_changes_only_this_reactor(reactor) -> None:  # noqa: F811
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
             "_tempDataBuffer", "_writeDisconnected", "_fromListeningDescriptor", "_logger", "_reads", "_writes"}
    offenders = []
    for path in (ROOT / "connscale").rglob("*.py"):
        if "compat" not in path.parts:
            offenders += [f"{path.relative_to(ROOT)}: .{name}" for name in sorted(names & _attribute_names(path))]
    assert offenders == []
