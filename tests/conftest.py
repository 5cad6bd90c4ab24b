"""Fixtures every test module may ask for by name (pytest finds them here).

Harnesses live in tests/support/ (control: the in-memory PB link and a fake agent mind;
minds: a fake mind for the controller's parts; hub: a real hub's processes; loop: a private
epoll reactor); a test module imports helpers from there, never from another test module.
"""

from __future__ import annotations

import fcntl
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from connscale.control.collect import EventLog
from connscale.control.controller import Controller
from connscale.control.registry import Registry
from tests.support.control import SECRET, make_cfg
from tests.support.certs import Pki
from tests.support.hub import Hub
from tests.support.sshd import sshd_or_skip
from tests.support.loop import reactor  # noqa: F401  (a fixture: a private EPollReactor per test)


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a non-interactive shell (`pytest &`, a CI step's
    # background job) inherits SIGINT ignored, and so would every process it starts: the tests
    # of what Ctrl-C does would find it ignored. They test connscale, not their launcher.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers", "alone: reads whole-host counters (the kernel's socket memory): runs with no other test "
                   "beside it when the suite runs in several processes (pytest -n)")


def _lock_path() -> str:
    # One per suite run: xdist's workers share their controller's run id in the environment.
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "")
    return os.path.join(tempfile.gettempdir(), f"connscale-tests-{run or os.getpid()}.lock")


@pytest.fixture(autouse=True)
def _alone_or_together(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test holds a shared lock, an `alone` test an exclusive one: under `pytest -n 2` the
    other worker finishes its current test and waits, so no other test's sockets move the
    host-wide counters an `alone` test compares with its own reading."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    with open(_lock_path(), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def clock() -> Clock:
    """A fake clock at 0; a module whose records need a later start advances it in its own fixture."""
    return Clock()


@pytest.fixture
def events() -> EventLog:
    return EventLog()


@pytest.fixture
def registry(clock: Clock, events: EventLog) -> Registry:
    return Registry(clock, events.note)


@pytest.fixture
def controller(clock: Clock) -> Controller:
    """A hub's controller serving 127.0.0.1:8989-8990, with the harness's secret."""
    return Controller(clock, make_cfg(), SECRET)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA of the test's own in its tmp_path, issuing the certificates a TLS test needs."""
    return Pki(tmp_path)


@pytest.fixture(scope="module")
def sshd() -> Iterator[Any]:
    """A real sshd on loopback for the module (skips where sshd or root is missing)."""
    with sshd_or_skip() as server:
        yield server


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    """Makes real hubs (`hub(grace=5, console="ssh", keys=path)`); stops every one it made."""
    made: list[Hub] = []

    def make(grace: float | None = None, **kw: Any) -> Hub:
        h = Hub(tmp_path, **kw)
        if grace is not None:
            h.config.write_text(h.config.read_text().replace("client:\n", f"client:\n  hub_grace: {grace}\n", 1))
        made.append(h)
        return h

    yield make
    for h in made:
        if h.proc is not None:
            h.proc.stop()
