"""End to end: real `twistd connscale-server` / `connscale-client` processes on loopback.

Every process is started through `tests.support.procs.Proc` and registered on
the `stack` fixture, whose teardown stops it by pid, so a failing assertion
never leaves a server behind. Loads
are modest (the machine is shared) and nothing asserts a timing: waits only
bound how long a test may take.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

from tests.support.procs import Proc, free_port, twistd

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# Start-up takes about a second; generous, because the machine is shared.
START_TIMEOUT = 30.0


# -- helpers -------------------------------------------------------------------

def ival(status: dict[str, str], key: str, default: int = 0) -> int:
    return int(status.get(key, default))


def start(stack: ExitStack, tmp: Path, name: str, command: str, *args: str,
          env: dict[str, str] | None = None) -> Proc:
    """Start a twistd child whose log is tmp/name.log; the stack stops it by pid."""
    proc = Proc(twistd(command, *args), tmp / f"{name}.log", env=env, cwd=tmp)
    stack.callback(proc.stop)
    return proc


def start_server(stack: ExitStack, tmp: Path, port: int, *args: str, name: str = "server",
                 env: dict[str, str] | None = None) -> Proc:
    proc = start(stack, tmp, name, "connscale-server", "--workers", "0", "--port", str(port),
                 "--status-interval", "1", *args, env=env)
    # Logged once the socket is bound and listening: connects queue from now on.
    proc.wait_line("connscale-server: serving", START_TIMEOUT)
    return proc


def start_client(stack: ExitStack, tmp: Path, port: int, *args: str, name: str = "client",
                 env: dict[str, str] | None = None) -> Proc:
    return start(stack, tmp, name, "connscale-client", "--server", f"127.0.0.1:{port}",
                 "--status-interval", "1", *args, env=env)


#: Both ways connscale drives its sockets (net.fastpath): its own transports, and Twisted's.
PATHS = {"fast": {"CONNSCALE_FAST_PATH": "1"}, "stock": {"CONNSCALE_FAST_PATH": "0"}}
SAYS = {"fast": "fast path", "stock": "Twisted's transports"}


@pytest.fixture(params=sorted(PATHS))
def path(request: pytest.FixtureRequest) -> str:
    """The key end-to-end tests run on the fast path and on stock Twisted."""
    return str(request.param)


def wait_status(proc: Proc, predicate: Callable[[dict[str, str]], bool], timeout: float, what: str) -> dict[str, str]:
    """Wait for a status line satisfying `predicate`; returns it."""
    found: list[dict[str, str]] = []

    def check() -> bool:
        for status in proc.status_lines():
            if predicate(status):
                found.append(status)
                return True
        return False

    proc.wait_for(check, timeout, what)
    return found[0]


def wait_new_status(proc: Proc, after: int, count: int, timeout: float) -> list[dict[str, str]]:
    """Wait until `count` status lines past the first `after` have been logged."""
    proc.wait_for(lambda: len(proc.status_lines()) >= after + count, timeout,
                  f"{count} status lines after line {after}")
    return proc.status_lines()[after:]


def stop_cleanly(proc: Proc, sig: int = signal.SIGTERM) -> None:
    """Stop by pid (if still running); twistd shuts down in order, then
    re-raises the signal so its exit status says how it ended (-sig, or 0)."""
    code = proc.stop()
    assert code in (0, -sig), (code, proc.text()[-3000:])
    assert "Server Shut Down." in proc.text(), proc.text()[-3000:]


def assert_no_traceback(*procs: Proc) -> None:
    for proc in procs:
        assert "Traceback" not in proc.text(), proc.text()[-4000:]


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends before closing; a reset counts as closed.

    A socket timeout propagates: the server failed to close the connection.
    """
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def run_twistd(tmp: Path, command: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(twistd(command, *args), capture_output=True, text=True, timeout=timeout, cwd=tmp,
                          stdin=subprocess.DEVNULL)


class SilentServer:
    """Accepts connections and never answers: a hung server, in this process."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as s:
        yield s


# -- 1. many connections held, counted on both sides ---------------------------

def test_5000_connections_held_for_10s_without_failures(tmp_path: Path, stack: ExitStack, path: str) -> None:
    port = free_port()
    n = 5000
    server = start_server(stack, tmp_path, port, env=PATHS[path])
    client = start_client(stack, tmp_path, port, "--connections", str(n), "--rate", "2500",
                          "--interval", "2", "--timeout", "2", env=PATHS[path])
    assert f"({SAYS[path]})" in server.text() or f"; {SAYS[path]})" in server.text(), server.text()[-2000:]
    client.wait_line(SAYS[path], START_TIMEOUT)

    wait_status(client, lambda s: ival(s, "open") == n, 40, f"client open={n}")
    wait_status(server, lambda s: ival(s, "open") == n, 20, f"server open={n}")
    client_mark = len(client.status_lines())
    server_mark = len(server.status_lines())

    # Watch at least 10 s of the hold (status lines come every second, so 10
    # lines take no less than that, however slow the machine is).
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        assert client.running() and server.running()
        last = client.last_status()
        assert last.get("failures") == "0", client.text()[-3000:]
        time.sleep(0.5)
    held = wait_new_status(client, client_mark, 10, 40)
    served = wait_new_status(server, server_mark, 10, 40)

    for s in held:
        assert ival(s, "open") == n, s
        assert ival(s, "opened") == n, s
        assert ival(s, "closed") == 0, s
        assert s["failures"] == "0", s
        assert not any(k.startswith("fail.") for k in s), s
        # One ping in flight per connection at most.
        assert 0 <= ival(s, "pings") - ival(s, "pongs") <= n, s
    pings = [ival(s, "pings") for s in held]
    pongs = [ival(s, "pongs") for s in held]
    assert pings == sorted(pings) and pings[-1] > pings[0], pings
    assert pongs == sorted(pongs) and pongs[-1] > pongs[0], pongs
    # Over 10 s at a 2 s interval every connection has pinged several times.
    assert pongs[-1] - pongs[0] >= n, pongs

    for s in served:
        assert ival(s, "open") == n, s
        assert s["failures"] == "0", s
        assert ival(s, "pings") == ival(s, "pongs"), s
    assert ival(served[-1], "pongs") > ival(served[0], "pongs")

    for proc in (client, server):
        assert "this process can hold" in proc.text()
    assert_no_traceback(client, server)

    # A clean stop: the client says goodbye with FIN, which the server does not
    # count as a failure.
    stop_cleanly(client)
    final = wait_status(server, lambda s: ival(s, "open") == 0, 30, "server open=0 after the client stopped")
    assert final["failures"] == "0", final


# -- 2. framings ---------------------------------------------------------------

def test_raw_framing_round_trip(tmp_path: Path, stack: ExitStack, path: str) -> None:
    raw_port, line_port = free_port(), free_port()
    raw = start_server(stack, tmp_path, raw_port, "--framing", "raw", name="raw-server", env=PATHS[path])
    line = start_server(stack, tmp_path, line_port, name="line-server", env=PATHS[path])
    client = start_client(stack, tmp_path, raw_port, "--framing", "raw", "--connections", "50",
                          "--interval", "0.5", "--timeout", "2", env=PATHS[path])

    status = wait_status(client, lambda s: ival(s, "open") == 50 and ival(s, "pongs") >= 100, 30,
                         "raw client pongs")
    assert status["failures"] == "0", status
    server_status = wait_status(raw, lambda s: ival(s, "pongs") > 0, 20, "raw server pongs")
    assert server_status["failures"] == "0", server_status

    # Raw: a Ping split over two segments is buffered, then answered whole.
    with closing(connect(raw_port)) as sock:
        sock.sendall(b"Pi")
        time.sleep(0.3)  # let the half arrive in a read of its own
        sock.sendall(b"ng")
        assert recv_exactly(sock, 4) == b"Pong"
        sock.sendall(b"PingPi")
        sock.sendall(b"ng")
        assert recv_exactly(sock, 8) == b"PongPong"

    # Line: a CRLF ping gets a CRLF pong, a LF ping a LF pong.
    with closing(connect(line_port)) as sock:
        sock.sendall(b"Ping\r\n")
        assert recv_exactly(sock, 6) == b"Pong\r\n"
        sock.sendall(b"Pi")
        time.sleep(0.3)
        sock.sendall(b"ng\n")
        assert recv_exactly(sock, 5) == b"Pong\n"

    stop_cleanly(client)
    for proc in (raw, line):
        final = wait_status(proc, lambda s: ival(s, "open") == 0 and ival(s, "closed") > 0, 20, "all closed")
        assert final["failures"] == "0", final
    assert_no_traceback(raw, line, client)


# -- 3. a hung server ------------------------------------------------------------

def test_server_that_never_answers(tmp_path: Path, stack: ExitStack) -> None:
    silent = SilentServer()
    stack.callback(silent.close)
    client = start_client(stack, tmp_path, silent.port, "-n", "20", "--interval", "1", "--timeout", "0.5")

    status = wait_status(client, lambda s: ival(s, "fail.first_ping.no_answer_from_server") >= 20, 30,
                         "20 no_answer_from_server failures")
    assert ival(status, "failures") == ival(status, "fail.first_ping.no_answer_from_server"), status
    assert status["pongs"] == "0", status
    fails = sorted(k for k in status if k.startswith("fail."))
    assert fails == ["fail.first_ping.no_answer_from_server"], status
    # The pool keeps its target: every connection that timed out is opened again.
    again = wait_status(client, lambda s: ival(s, "opened") > 20, 30, "replacement connections")
    assert again["pongs"] == "0", again
    assert_no_traceback(client)


# -- 4. nothing listening ------------------------------------------------------------

def test_refused_port(tmp_path: Path, stack: ExitStack) -> None:
    port = free_port()
    client = start_client(stack, tmp_path, port, "-n", "10")
    status = wait_status(client, lambda s: ival(s, "fail.connect.ECONNREFUSED") >= 10, 30,
                         "10 ECONNREFUSED failures")
    assert status["failures"] == status["fail.connect.ECONNREFUSED"], status
    assert (status["open"], status["opened"]) == ("0", "0"), status
    assert sorted(k for k in status if k.startswith("fail.")) == ["fail.connect.ECONNREFUSED"], status
    assert_no_traceback(client)


# -- 5. protocol violations next to a healthy client ---------------------------------

def test_garbage_long_line_and_flood_are_closed_and_counted(tmp_path: Path, stack: ExitStack, path: str) -> None:
    port = free_port()
    server = start_server(stack, tmp_path, port, env=PATHS[path])
    client = start_client(stack, tmp_path, port, "-n", "200", "--interval", "1", "--timeout", "2", env=PATHS[path])
    wait_status(client, lambda s: ival(s, "open") == 200 and ival(s, "pongs") > 0, 30, "healthy client")

    # An unknown line: closed, nothing answered.
    with closing(connect(port)) as sock:
        sock.sendall(b"Hello\n")
        assert read_until_closed(sock) == b""

    # 1 MiB without a newline: the server stops reading and closes; our send
    # may well hit the reset, which is fine.
    with closing(connect(port)) as sock:
        try:
            sock.sendall(b"x" * (1 << 20))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert read_until_closed(sock) == b""

    # A flood: 100 pings in one segment; closed without a single Pong.
    with closing(connect(port)) as sock:
        sock.sendall(b"Ping\n" * 100)
        assert read_until_closed(sock) == b""

    status = wait_status(
        server,
        lambda s: all(ival(s, f"proto.{k}") == 1 for k in ("unknown_line", "line_too_long", "flood")),
        20, "server counted the three violations",
    )
    # None of them sent a valid ping first: they fail in the first_ping phase.
    assert ival(status, "fail.first_ping.protocol_error") == 3, status
    assert status["failures"] == "3", status
    assert sorted(k for k in status if k.startswith("fail.")) == ["fail.first_ping.protocol_error"], status

    # The healthy client did not notice.
    mark = len(client.status_lines())
    before = client.last_status()
    after = wait_new_status(client, mark, 2, 20)
    for s in after:
        assert s["failures"] == "0", s
        assert ival(s, "open") == 200, s
    assert ival(after[-1], "pongs") > ival(before, "pongs"), (before, after[-1])
    # ... and neither did the server's count of it.
    last = server.last_status()
    assert ival(last, "open") == 200 and last["failures"] == "3", last
    assert_no_traceback(server, client)


# -- 6. the twistd plugins -----------------------------------------------------------

def test_twistd_help_lists_both_commands(tmp_path: Path) -> None:
    result = subprocess.run(twistd("--help")[:3] + ["--help"], capture_output=True, text=True, timeout=60,
                            cwd=tmp_path, stdin=subprocess.DEVNULL)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"^\s*connscale-server\b", out, re.M), out
    assert re.search(r"^\s*connscale-client\b", out, re.M), out


# -- 7. configuration errors -------------------------------------------------------

def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out, out
    lines = [line for line in out.splitlines() if all(n in line for n in needles)]
    assert len(lines) == 1, out


def test_bad_config_key_and_bad_value(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("client:\n  conections: 5\n")
    result = run_twistd(tmp_path, "connscale-client", "--config", str(config))
    assert_one_line_error(result, "client.conections", "did you mean 'connections'")
    assert result.returncode == 2

    result = run_twistd(tmp_path, "connscale-client", "--rate", "fast")
    assert_one_line_error(result, "client.rate", "'fast'")
    assert result.returncode == 2


# -- 8. port in use ---------------------------------------------------------------

def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    with closing(socket.socket()) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(8)
        port = holder.getsockname()[1]
        result = run_twistd(tmp_path, "connscale-server", "--workers", "0", "--port", str(port))
    assert_one_line_error(result, f"cannot listen on 127.0.0.1:{port}: EADDRINUSE")


# -- 9. hub mode: workers' counts merged -------------------------------------------

def test_hub_mode_merges_worker_counts(tmp_path: Path, stack: ExitStack, path: str) -> None:
    port, control = free_port(), free_port()
    xdg = tmp_path / "xdg"
    record = tmp_path / "record"
    hub = start(stack, tmp_path, "hub", "connscale-server", "--port", str(port),
                "--control", f"tcp:{control}:interface=127.0.0.1", "--console", "none",
                "--record-dir", str(record), "--status-interval", "1",
                env={"XDG_CONFIG_HOME": str(xdg), **PATHS[path]})
    hub.wait_line("server workers listening", 60)
    workers = int(re.search(r"(\d+) server workers listening", hub.text()).group(1))  # type: ignore[union-attr]
    assert workers >= 2, hub.text()[-3000:]
    assert f"server workers listening ({SAYS[path]};" in hub.text(), hub.text()[-3000:]

    n = 3000
    client = start_client(stack, tmp_path, port, "--connections", str(n), "--rate", "2500",
                          "--interval", "2", "--timeout", "2", env=PATHS[path])
    wait_status(client, lambda s: ival(s, "open") == n, 40, f"client open={n}")
    status = wait_status(hub, lambda s: ival(s, "open") == n and ival(s, "pongs") > 0, 40, f"hub open={n}")
    assert status["failures"] == "0", status
    assert client.last_status()["failures"] == "0", client.last_status()

    # A secret was generated where a local `connscale ctl` finds it.
    assert (xdg / "connscale" / "secret").is_file()

    timeline = record / "timeline.jsonl"

    def full_records() -> list[dict]:
        if not timeline.is_file():
            return []
        # The last line may be mid-write; only complete lines count.
        lines = timeline.read_text().split("\n")[:-1]
        records = [json.loads(line) for line in lines if line.strip()]
        assert all(isinstance(r, dict) for r in records), records
        return [r for r in records if r.get("server", {}).get("open") == n]

    hub.wait_for(lambda: bool(full_records()), 20, f"a timeline record with server open={n}")
    rec = full_records()[-1]
    # The total is the sum of the workers' own counts, and SO_REUSEPORT spread
    # the accepts over more than one of them.
    per_worker = [w["open"] for w in rec["server_workers"]]
    assert len(per_worker) == workers and sum(per_worker) == n, rec["server_workers"]
    assert sum(1 for held in per_worker if held > 0) >= 2, per_worker

    worker_pids = [w["pid"] for w in rec["server_workers"]]

    stop_cleanly(client)
    wait_status(hub, lambda s: ival(s, "open") == 0 and ival(s, "closed") == n, 30, "hub open=0 after the client")

    # SIGTERM to the hub's pid alone: the hub itself stops its workers, and a
    # planned stop is no lost worker.
    os.kill(hub.pid, signal.SIGTERM)
    hub.popen.wait(30)
    stop_cleanly(hub)
    assert " lost: " not in hub.text(), hub.text()[-3000:]
    last = [json.loads(line) for line in timeline.read_text().splitlines() if line.strip()][-1]
    assert last["server_lost_workers"] == 0, last
    assert last["server"]["failures"] == {}, last["server"]
    for pid in worker_pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, pid
    assert_no_traceback(hub, client)


def test_hub_stopped_with_its_process_group_loses_no_workers(tmp_path: Path, stack: ExitStack) -> None:
    port, control = free_port(), free_port()
    record = tmp_path / "record"
    hub = start(stack, tmp_path, "hub", "connscale-server", "--port", str(port), "--workers", "2",
                "--control", f"tcp:{control}:interface=127.0.0.1", "--console", "none",
                "--record-dir", str(record), "--status-interval", "1",
                env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    hub.wait_line("server workers listening", 60)
    # What a terminal's Ctrl-C does: SIGINT to every process of the group.
    os.killpg(hub.pid, signal.SIGINT)
    try:
        # Its workers' stop has a 5 s grace and a 2 s one after it: 60 s is a box several times too busy.
        hub.popen.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the hub did not exit within 60 s of SIGINT:\n{hub.text()[-4000:]}") from None
    stop_cleanly(hub, signal.SIGINT)
    last = [json.loads(line) for line in (record / "timeline.jsonl").read_text().splitlines() if line.strip()][-1]
    assert " lost: " not in hub.text(), hub.text()[-3000:]
    assert last["server_lost_workers"] == 0, last


def test_server_at_its_fd_limit_counts_emfile_and_client_sees_why(tmp_path: Path, stack: ExitStack) -> None:
    """The original's finding 3, server side: a low hard RLIMIT_NOFILE (set with
    prlimit on the server only) makes accept() fail with EMFILE; the server
    counts it by cause instead of logging a line per dropped connection."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) missing")
    port = free_port()
    proc = Proc(["prlimit", "--nofile=160:160", *twistd("connscale-server", "--workers", "0", "--port", str(port),
                                                       "--status-interval", "1")],
                tmp_path / "server.log", cwd=tmp_path)
    stack.callback(proc.stop)
    proc.wait_line("connscale-server: serving", START_TIMEOUT)
    assert "this process can hold 60 connections" in proc.text()
    client = start_client(stack, tmp_path, port, "-n", "300", "--rate", "1000", "--interval", "1", "--timeout", "1")
    server_status = wait_status(proc, lambda s: ival(s, "fail.connect.EMFILE") > 0, 30, "server EMFILE failures")
    assert 0 < int(server_status["open"]) <= 160, server_status
    client_status = wait_status(client, lambda s: ival(s, "failures") > 0, 30, "client failures")
    causes = {k for k in client_status if k.startswith("fail.")}
    assert causes <= {"fail.first_ping.closed_by_peer", "fail.first_ping.ECONNRESET",
                      "fail.first_ping.no_answer_from_server"}, client_status
    assert "EMFILE recovery" not in proc.text()
    assert_no_traceback(proc)


def test_client_at_its_fd_limit_says_so_and_classifies_emfile(tmp_path: Path, stack: ExitStack) -> None:
    """Client side of finding 3: the budget warning names what lifts it, and the
    connects beyond the limit fail with cause EMFILE."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) missing")
    port = free_port()
    start_server(stack, tmp_path, port)
    client = Proc(["prlimit", "--nofile=160:160",
                   *twistd("connscale-client", "--server", f"127.0.0.1:{port}", "--workers", "0", "-n", "300",
                           "--rate", "1000", "--status-interval", "1")],
                  tmp_path / "client.log", cwd=tmp_path)
    stack.callback(client.stop)
    status = wait_status(client, lambda s: ival(s, "fail.connect.EMFILE") > 0 and ival(s, "open") > 0, 30,
                         "client EMFILE failures")
    status = wait_status(client, lambda s: ival(s, "open") + ival(s, "fail.connect.EMFILE") >= 300, 30,
                         "every connect beyond the budget failing")
    # Replacements keep trying (and failing, counted), but never past the fd limit.
    assert 0 < ival(status, "open") < 160, status
    text = client.text()
    assert "this process can hold only 60 connections" in text and "--workers" in text
    assert_no_traceback(client)


def test_standalone_client_with_workers_splits_the_target(tmp_path: Path, stack: ExitStack) -> None:
    """A standalone client beyond one process: the same plan as the controller's,
    counted together in one status line."""
    port = free_port()
    server = start_server(stack, tmp_path, port)
    client = start_client(stack, tmp_path, port, "-n", "2000", "--workers", "2", "--rate", "2000",
                          "--interval", "2", "--timeout", "2", "--source-ip", "127.0.0.2-127.0.0.3")
    client.wait_line("2000 connections over 2 workers (1000+1000)", 30)
    status = wait_status(client, lambda s: s.get("open") == "2000", 60, "client open=2000")
    assert status["failures"] == "0", status
    wait_status(server, lambda s: s.get("open") == "2000", 30, "server open=2000")
    workers = [line for line in client.lines() if "client-worker-" in line and "started (pid" in line]
    assert len(workers) == 2, workers
    assert_no_traceback(client)
