"""procs.child.ChildProcess: lines, tail, exit codes and the stop escalation.

Driven through a fake process transport and a fake clock; the real-process
paths are exercised by test_worker_pb (workers), test_launch (ssh) and the
end-to-end tests.
"""

from __future__ import annotations

import sys

import pytest
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from connscale.procs.child import MAX_LINE, PIPE_LINGER, ChildProcess, exit_code_of


class FakeTransport:
    def __init__(self, pid: int = 4321) -> None:
        self.pid = pid
        self.signals: list[str] = []
        self.written = b""
        self.stdin_closed = False
        self.lost = False
        self.gone = False

    def signalProcess(self, sig: str) -> None:
        if self.gone:
            raise ProcessExitedAlready()
        self.signals.append(sig)

    def write(self, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def loseConnection(self) -> None:
        self.lost = True


class Recording(ChildProcess):
    def __init__(self, clock: Clock, stdin_data: bytes = b"") -> None:
        super().__init__(clock, "kid", stdin_data)
        self.lines: list[tuple[int, str]] = []
        self.exits: list[int | None] = []

    def line(self, fd: int, text: str) -> None:
        self.lines.append((fd, text))

    def exited(self, reason: Failure) -> None:
        self.exits.append(self.exit_code)


def started(stdin_data: bytes = b"") -> tuple[Recording, FakeTransport, Clock]:
    clock = Clock()
    child = Recording(clock, stdin_data)
    transport = FakeTransport()
    child.makeConnection(transport)
    return child, transport, clock


def end(child: ChildProcess, transport: FakeTransport, reason: Failure) -> None:
    transport.gone = True
    child.processExited(reason)
    child.processEnded(reason)


def test_pid_stdin_data_and_lines_split_across_chunks() -> None:
    child, transport, _ = started(b"secret\n")
    assert child.pid == 4321 and transport.written == b"secret\n"
    child.childDataReceived(1, b"one\ntw")
    child.childDataReceived(2, b"err\r\n\n   \n")
    child.childDataReceived(1, b"o\nthree")
    child.childDataReceived(3, b"not a line fd\n")
    assert child.lines == [(1, "one"), (2, "err"), (1, "two")]
    child.childConnectionLost(1)  # a last line without its newline still counts
    assert child.lines[-1] == (1, "three")
    assert list(child.tail) == ["one", "err", "two", "three"]


def test_a_huge_line_is_passed_on_in_pieces_not_kept() -> None:
    child, _, _ = started()
    child.childDataReceived(1, b"x" * (MAX_LINE + 10))
    assert child.lines == [(1, "x" * (MAX_LINE + 10))]
    assert child._partial[1] == b""


def test_tail_is_bounded() -> None:
    child, _, _ = started()
    for i in range(100):
        child.childDataReceived(2, b"line %d\n" % i)
    assert len(child.tail) == child.tail_lines and child.tail[-1] == "line 99"


@pytest.mark.parametrize("reason, code", [
    (ProcessDone(None), 0),
    (ProcessTerminated(exitCode=3), 3),
    (ProcessTerminated(signal=9), -9),
    (RuntimeError("what"), -1),
])
def test_exit_codes(reason: Exception, code: int) -> None:
    assert exit_code_of(Failure(reason)) == code


def test_ended_fires_after_the_exit_hook_with_the_code() -> None:
    child, transport, _ = started()
    order: list[str] = []
    child.ended.addCallback(lambda code: order.append(f"ended {code}"))
    assert child.running
    end(child, transport, Failure(ProcessTerminated(exitCode=2)))
    assert child.exits == [2] and order == ["ended 2"] and not child.running


def test_stop_closes_stdin_then_terminates_then_kills() -> None:
    child, transport, clock = started()
    done = child.stop(grace=5, term_grace=2)
    assert transport.stdin_closed and transport.signals == [] and not done.called
    clock.advance(5)
    assert transport.signals == ["TERM"]
    clock.advance(2)
    assert transport.signals == ["TERM", "KILL"]
    second = child.stop()
    end(child, transport, Failure(ProcessTerminated(signal=9)))
    assert done.called and second.called
    assert child.stop().called  # once ended, stop is a no-op


def test_stop_with_terminate_signals_at_once_and_kills_after_grace() -> None:
    child, transport, clock = started()
    child.stop(grace=15, terminate=True)
    assert transport.signals == ["TERM"] and not transport.stdin_closed
    clock.advance(15)
    assert transport.signals == ["TERM", "KILL"]


def test_a_child_that_leaves_in_time_gets_no_signal() -> None:
    child, transport, clock = started()
    child.stop(grace=5)
    end(child, transport, Failure(ProcessDone(None)))
    clock.advance(60)
    assert transport.signals == [] and clock.getDelayedCalls() == []


def test_pipes_held_open_by_a_grandchild_are_abandoned() -> None:
    child, transport, clock = started()
    child.processExited(Failure(ProcessDone(None)))
    clock.advance(PIPE_LINGER)
    assert transport.lost


def test_signals_after_the_end_go_nowhere() -> None:
    child, transport, _ = started()
    end(child, transport, Failure(ProcessDone(None)))
    child.signal("KILL")
    assert transport.signals == []


def test_spawn_passes_our_environment_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class Reactor(Clock):
        def spawnProcess(self, proto, executable, args, env, path, childFDs):  # type: ignore[no-untyped-def]
            calls.append((executable, args, env, path, childFDs))

    monkeypatch.setenv("CONNSCALE_CHILD_TEST", "yes")
    child = ChildProcess(Reactor(), "kid")
    child.spawn([sys.executable, "-c", "pass"])
    executable, args, env, path, fds = calls[0]
    assert executable == sys.executable and env["CONNSCALE_CHILD_TEST"] == "yes" and fds is None
    child.spawn(["x"], env={"A": "1"}, path="/tmp", child_fds={0: "w"}, executable="/bin/true")
    assert calls[1] == ("/bin/true", ["x"], {"A": "1"}, "/tmp", {0: "w"})
