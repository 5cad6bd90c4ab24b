"""The observer's readers (connscale.host.process, sockets, slab, watch): fake /proc trees
for the parsing and the bookkeeping, then the real thing (a real listening process with a
lowered RLIMIT_NOFILE, real sockets in an accept queue)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connscale.host import slab, sockets
from connscale.host.observed import ObserverReport, TargetRow
from connscale.host.process import (
    descendants,
    find_by_name,
    parse_limits,
    parse_pss,
    process_table,
    read_process,
)
from connscale.host.watch import TargetSpec, TargetWatch, read_host
from tests.support.fakeproc import FakeProc, limits_text

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def no_sockets() -> list[sockets.TcpSocket]:
    return []


def watch(tree: Path, spec: TargetSpec, listeners=no_sockets, established=lambda ports: {}) -> TargetWatch:
    return TargetWatch(spec, str(tree), listeners=listeners, established=established)


# -- parsing ----------------------------------------------------------------------------------

def test_limits_parse_soft_and_hard_with_unlimited_as_none():
    got = parse_limits(limits_text(("5000", "unlimited")))
    assert got["nofile"] == (5000, None)
    assert got["nproc"] == (96553, 96553)
    assert got["as"] == (None, None)
    assert "cpu" not in got  # only the limits a connection count meets


def test_pss_from_smaps_rollup():
    assert parse_pss("x [rollup]\nRss: 10 kB\nPss:  1234 kB\nPss_Anon: 1 kB\n") == 1234 * 1024
    assert parse_pss("nothing here\n") is None


def test_read_process_on_a_fake_tree(tmp_path):
    proc = FakeProc(tmp_path)
    proc.add(42, "redis-server", ppid=1, rss_pages=1000, utime=3 * TICK, stime=TICK, threads=5,
             nofile=("5000", "5000"), pss_kb=2000, sockets=(111, 222), files=4)
    r = read_process(42, str(tmp_path), scan=True)
    assert r is not None
    assert (r.pid, r.ppid, r.name, r.threads) == (42, 1, "redis-server", 5)
    assert r.rss == 1000 * PAGE and r.pss == 2000 * 1024
    assert r.cpu_s == pytest.approx(4.0)
    assert r.fds == 6 and r.socket_inodes == {111, 222}
    assert r.nofile == (5000, 5000)
    assert r.unreadable == ()
    # Without a scan the fds are counted, their sockets not looked at.
    assert read_process(42, str(tmp_path)).socket_inodes == frozenset()
    assert read_process(43, str(tmp_path)) is None


def test_what_cannot_be_read_is_said_not_zeroed(tmp_path):
    proc = FakeProc(tmp_path)
    d = proc.add(7, "nginx", pss_kb=None)
    os.rename(d / "fd", d / "fd-gone")
    r = read_process(7, str(tmp_path))
    assert r.pss is None and r.fds is None
    assert any(u.startswith("pss:") for u in r.unreadable) and any(u.startswith("fds:") for u in r.unreadable)


def test_find_by_name_gives_the_master_not_its_workers(tmp_path):
    proc = FakeProc(tmp_path)
    proc.add(100, "nginx", ppid=1, start=500)
    proc.add(101, "nginx", ppid=100, start=510)
    proc.add(102, "nginx", ppid=100, start=511)
    proc.add(200, "nginx", ppid=1, start=400)     # an older, separate nginx
    proc.add(300, "python3", ppid=1, argv0="/usr/bin/redis-server")
    table = process_table(str(tmp_path))
    assert find_by_name("nginx", str(tmp_path), table) == [200, 100]
    assert descendants(100, table) == [101, 102]
    # A name that is not its comm is found by argv[0].
    assert find_by_name("redis-server", str(tmp_path), table) == [300]
    assert find_by_name("absent", str(tmp_path), table) == []


def test_slabinfo_bytes_per_cache():
    text = ("slabinfo - version: 2.1\n# name <active_objs> ...\n"
            "TCP                 6088   6214   2368   13    8 : tunables    0    0    0 : slabdata    478    478      0\n"
            "sock_inode_cache    6172   6555    832   19    4 : tunables    0    0    0 : slabdata    345    345      0\n"
            "dentry            161801 162477    192   21    1 : tunables    0    0    0 : slabdata   7737   7737      0\n"
            "broken line\n")
    got = slab.parse_slabinfo(text, 4096)
    assert got["TCP"] == 478 * 8 * 4096
    assert got["sock_inode_cache"] == 345 * 4 * 4096
    assert slab.socket_caches(got) == {"TCP": got["TCP"], "sock_inode_cache": got["sock_inode_cache"]}


def test_proc_net_tcp_rows():
    text = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:2328 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 4242 1\n"
        "   1: 0100007F:2328 0100007F:D431 01 00000010:00000000 00:00000000 00000000     0        0 4243 1\n")
    rows = list(sockets.parse_proc_tcp(text, socket.AF_INET))
    assert rows[0] == sockets.TcpSocket(socket.AF_INET, sockets.LISTEN, "127.0.0.1", 9000, 3, None, 4242)
    assert rows[1].state == sockets.ESTABLISHED and rows[1].wqueue == 16 and rows[1].inode == 4243


# -- following a target ------------------------------------------------------------------------

def test_a_named_target_that_restarts_is_found_again_as_an_event(tmp_path):
    proc = FakeProc(tmp_path)
    proc.add(10, "redis-server", start=100)
    w = watch(tmp_path, TargetSpec(name="redis-server"))
    row, events = w.read()
    assert (row.pid, row.alive, events) == (10, True, [])
    proc.remove(10)
    row, events = w.read()
    assert not row.alive and [e.kind for e in events] == ["exited"]
    assert events[0].describe(41) == "redis-server (pid 10) exited at 41 s"
    assert row.problems == ("redis-server: not running",)
    proc.add(57, "redis-server", start=300)
    row, events = w.read()
    assert row.pid == 57 and row.alive and events[0].kind == "found"
    # Gone and back between two readings: one event says both.
    proc.remove(57)
    proc.add(58, "redis-server", start=400)
    row, events = w.read()
    assert [e.describe(50) for e in events] == ["redis-server (pid 57) exited at 50 s; restarted as pid 58"]


def test_a_pid_target_whose_pid_is_reused_is_replaced_not_followed(tmp_path):
    proc = FakeProc(tmp_path)
    proc.add(10, "redis-server", start=100)
    w = watch(tmp_path, TargetSpec(pid=10))
    assert w.read()[0].alive
    proc.add(10, "bash", start=999)
    row, events = w.read()
    assert not row.alive and events[0].kind == "replaced" and "another process (bash)" in events[0].describe()


def test_children_target_reports_worker_churn(tmp_path):
    proc = FakeProc(tmp_path)
    proc.add(1, "init", ppid=0)
    proc.add(50, "hub", ppid=1)
    proc.add(51, "worker", ppid=50, start=1)
    proc.add(52, "worker", ppid=50, start=2)
    w = watch(tmp_path, TargetSpec(pid=50, children=True, label="connscale server workers"))
    row, events = w.read()
    assert [p.pid for p in row.processes] == [51, 52] and events == []
    proc.remove(52)
    proc.add(53, "worker", ppid=50, start=3)
    row, events = w.read()
    assert [p.pid for p in row.processes] == [51, 53]
    assert sorted(e.kind for e in events) == ["child_exited", "child_started"]


def test_listeners_and_established_are_the_targets_own(tmp_path):
    proc = FakeProc(tmp_path)
    proc.add(10, "redis-server", sockets=(900, 901))
    listening = [sockets.TcpSocket(socket.AF_INET, sockets.LISTEN, "127.0.0.1", 6379, 2, 511, 900),
                 sockets.TcpSocket(socket.AF_INET, sockets.LISTEN, "127.0.0.1", 8080, 0, 128, 555)]  # not its
    asked = []

    def established(ports):
        asked.append(set(ports))
        return {6379: 7}

    row, _ = watch(tmp_path, TargetSpec(pid=10), lambda: listening, established).read()
    assert [(lst.port, lst.queue, lst.backlog, lst.pid, lst.established) for lst in row.listeners] == [
        (6379, 2, 511, 10, 7)]
    assert asked == [{6379}]
    assert row.established == 7 and row.fds == 5
    # The record survives its wire form.
    assert TargetRow.from_wire(row.to_wire()) == row


# -- the real thing ------------------------------------------------------------------------------

SERVER = """
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(7)
print(s.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_a_real_server_its_limit_accept_queue_and_connections():
    """A real process with RLIMIT_NOFILE 5,000 (set by prlimit, as the issue's test does), a
    listening socket with backlog 7, three connections the kernel completed that it never
    accepted: the observer reads what `ss -ltn` and /proc/PID/limits say."""
    child = subprocess.Popen(["prlimit", "--nofile=5000:5000", sys.executable, "-c", SERVER],
                             stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        w = TargetWatch(TargetSpec(pid=child.pid))
        deadline = time.monotonic() + 10
        while True:
            row, _ = w.read()
            if row.listeners and row.listeners[0].queue == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert row.alive and row.pid == child.pid
        (p,) = row.processes
        assert (p.nofile_soft, p.nofile_hard) == (5000, 5000)
        assert p.fds is not None and p.fds >= 4 and p.rss > 0 and p.pss is not None
        (lst,) = row.listeners
        assert (lst.port, lst.queue, lst.backlog, lst.pid) == (port, 3, 7, child.pid)
        # Completed by the kernel, waiting in the queue: established on its port.
        assert lst.established == 3
        report = ObserverReport((row,), read_host())
        assert ObserverReport.from_wire(report.to_wire()) == report
        for c in clients:
            c.close()
    finally:
        child.kill()
        child.wait()
    row, events = w.read()
    assert not row.alive and events and events[0].kind == "exited"


def test_real_host_counters():
    host = read_host()
    assert host.tcp_inuse is not None and host.sockets_used is not None and host.mem_available
    assert len(host.tcp_mem) == 3
    if os.geteuid() == 0:
        assert host.socket_slab and "TCP" in host.socket_slab and host.socket_slab_bytes > 0


def test_the_port_filter_counts_only_the_ports_asked():
    """sock_diag with the kernel filtering by local port (bytecode): the counts of each port."""
    servers, ports, clients = [], [], []
    for _ in range(3):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        servers.append(s)
        ports.append(s.getsockname()[1])
    try:
        for i, port in enumerate(ports):
            clients += [socket.create_connection(("127.0.0.1", port)) for _ in range(2 * i + 1)]
        assert sockets.established_by_port(ports) == {ports[0]: 1, ports[1]: 3, ports[2]: 5}
        assert sockets.established_by_port(ports[1:2]) == {ports[1]: 3}
    finally:
        for s in clients + servers:
            s.close()
