import os
import resource
from pathlib import Path

import attrs
import pytest

from connscale.diagnose.fixes import CAUSES, advise
from connscale.host import limits
from connscale.host.kernel import kernel_snapshot, read_netstat, read_sockstat
from connscale.host.limits import (
    FD_RESERVE,
    NofileResult,
    budget_advice,
    connection_budget,
    raise_nofile,
)
from connscale.host.resources import process_resources
from connscale.host.sysctl import (
    backlog_warning,
    ephemeral_count,
    ephemeral_range,
    read_nr_open,
    read_sysctl,
)

INF = resource.RLIM_INFINITY


class FakeRlimit:
    """getrlimit/setrlimit pair over an in-memory (soft, hard)."""

    def __init__(self, soft, hard, fail=None):
        self.limits = (soft, hard)
        self.fail = fail
        self.calls = []

    def getrlimit(self, which):
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which, limits):
        assert which == resource.RLIMIT_NOFILE
        self.calls.append(limits)
        if self.fail is not None:
            raise self.fail
        self.limits = limits


# --- raise_nofile -----------------------------------------------------------


def test_raise_nofile_raises_soft_to_hard():
    fake = FakeRlimit(1024, 524288)
    result = raise_nofile(fake.getrlimit, fake.setrlimit)
    assert result == NofileResult(before_soft=1024, soft=524288, hard=524288, raised=True, error=None)
    assert fake.calls == [(524288, 524288)]


def test_raise_nofile_noop_when_already_at_hard():
    fake = FakeRlimit(4096, 4096)
    result = raise_nofile(fake.getrlimit, fake.setrlimit)
    assert result == NofileResult(4096, 4096, 4096, raised=False, error=None)
    assert fake.calls == []


def test_raise_nofile_infinite_hard_uses_nr_open():
    fake = FakeRlimit(1024, INF)
    result = raise_nofile(fake.getrlimit, fake.setrlimit, read_nr_open=lambda: 65536)
    assert result.raised and result.soft == 65536 and result.hard == INF
    assert fake.calls == [(65536, INF)]


def test_raise_nofile_infinite_hard_caps_huge_nr_open():
    fake = FakeRlimit(1024, INF)
    result = raise_nofile(fake.getrlimit, fake.setrlimit, read_nr_open=lambda: 1 << 30)
    assert result.soft == limits.NOFILE_CEILING == 1048576


@pytest.mark.parametrize("reader", [lambda: None, lambda: 1 / 0])
def test_raise_nofile_infinite_hard_without_nr_open(reader):
    fake = FakeRlimit(1024, INF)
    result = raise_nofile(fake.getrlimit, fake.setrlimit, read_nr_open=reader)
    assert result.raised and result.soft == 1048576 and result.error is None


def test_raise_nofile_records_setrlimit_failure():
    fake = FakeRlimit(1024, 4096, fail=PermissionError(1, "Operation not permitted"))
    result = raise_nofile(fake.getrlimit, fake.setrlimit)
    assert result.raised is False
    assert (result.before_soft, result.soft, result.hard) == (1024, 1024, 4096)
    assert "setrlimit" in result.error and "Operation not permitted" in result.error


def test_raise_nofile_records_getrlimit_failure():
    def broken(which):
        raise OSError("nope")

    result = raise_nofile(broken, lambda *a: None)
    assert result.raised is False and "nope" in result.error


def test_raise_nofile_with_real_getrlimit():
    # Real getrlimit, recorded setrlimit: the test process's own limit stays untouched.
    calls = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    result = raise_nofile(setrlimit=lambda which, lim: calls.append(lim))
    assert result.before_soft == soft and result.hard == hard and result.error is None
    assert result.raised == bool(calls)


def test_nofile_result_is_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        NofileResult(1, 2, 3, True, None).soft = 5


# --- budget -----------------------------------------------------------------


def test_connection_budget():
    assert FD_RESERVE == 100
    assert connection_budget(1024) == 924
    assert connection_budget(50) == 0
    assert connection_budget(1000, reserve=10) == 990


def test_budget_advice_none_when_enough():
    assert budget_advice(900, 924, 4096) is None
    assert budget_advice(924, 924, 4096) is None


def test_budget_advice_worker_math():
    msg = budget_advice(100_000, 924, 1024)
    # ceil(100000 / 924) == 109 (108 workers would hold only 99792).
    assert "--workers 109" in msg
    assert "924 connections" in msg and "hard limit 1024" in msg
    assert "ulimit -Hn" in msg and "LimitNOFILE=" in msg and "/etc/security/limits.conf" in msg
    assert "\n" not in msg and msg.endswith(".")
    assert "--workers 2 " in budget_advice(1848, 924, 1024)
    assert "--workers 3" in budget_advice(1849, 924, 1024)


def test_budget_advice_zero_budget():
    msg = budget_advice(10, 0, 64)
    assert "0 connections" in msg and "ulimit -Hn" in msg


# --- sysctl -----------------------------------------------------------------


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_read_sysctl_values(tmp_path):
    write(tmp_path, "net/core/somaxconn", "4096\n")
    write(tmp_path, "net/ipv4/ip_local_port_range", "1024\t65000\n")
    write(tmp_path, "net/ipv4/tcp_mem", "287901\t383868\t575802\n")
    write(tmp_path, "net/ipv4/tcp_congestion_control", "cubic\n")
    write(tmp_path, "net/ipv4/conf/eth0.100/rp_filter", "1\n")
    root = str(tmp_path)
    assert read_sysctl("net.core.somaxconn", root) == 4096
    assert read_sysctl("net.ipv4.ip_local_port_range", root) == (1024, 65000)
    assert read_sysctl("net.ipv4.tcp_mem", root) == (287901, 383868, 575802)
    assert read_sysctl("net.ipv4.tcp_congestion_control", root) == "cubic"
    assert read_sysctl("net.ipv4.conf.eth0/100.rp_filter", root) == 1
    assert read_sysctl("net.core.missing", root) is None
    assert read_sysctl("net..core", root) is None
    assert read_sysctl("..", root) is None


def test_read_nr_open(tmp_path):
    write(tmp_path, "fs/nr_open", "1048576\n")
    assert read_nr_open(str(tmp_path)) == 1048576
    assert read_nr_open(str(tmp_path / "nowhere")) is None


def test_ephemeral_range(tmp_path):
    write(tmp_path, "net/ipv4/ip_local_port_range", "10000 10999\n")
    assert ephemeral_range(str(tmp_path)) == (10000, 10999)
    assert ephemeral_count(str(tmp_path)) == 1000


@pytest.mark.parametrize("content", [None, "garbage\n", "5000 4000\n", "1 2 3\n", "0 70000\n"])
def test_ephemeral_range_defaults(tmp_path, content):
    if content is not None:
        write(tmp_path, "net/ipv4/ip_local_port_range", content)
    assert ephemeral_range(str(tmp_path)) == (32768, 60999)
    assert ephemeral_count(str(tmp_path)) == 28232


def test_backlog_warning():
    assert backlog_warning(4096, 128) == (
        "listen backlog 4096 is capped to net.core.somaxconn=128; "
        "raise it with sysctl -w net.core.somaxconn=4096"
    )
    assert backlog_warning(4096, 4096) is None
    assert backlog_warning(128, 4096) is None
    assert backlog_warning(4096, None) is None


# --- kernel counters --------------------------------------------------------

NETSTAT = """\
TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPAbortOnOverflow TCPOrigDataSent
TcpExt: 3 17 19 2 12345
IpExt: InNoRoutes InOctets
IpExt: 0 19777026
MPTcpExt: MPCapableSYNRX
MPTcpExt: 0
"""

SOCKSTAT = """\
sockets: used 311
TCP: inuse 201 orphan 4 tw 17 alloc 230 mem 12
UDP: inuse 3 mem 1
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
"""


def test_read_netstat(tmp_path):
    p = tmp_path / "netstat"
    p.write_text(NETSTAT)
    got = read_netstat(str(p))
    assert got == {
        "SyncookiesSent": 3,
        "ListenOverflows": 17,
        "ListenDrops": 19,
        "TCPAbortOnOverflow": 2,
        "TCPOrigDataSent": 12345,
    }
    assert read_netstat(str(p), section="IpExt") == {"InNoRoutes": 0, "InOctets": 19777026}


def test_read_netstat_truncated_and_missing(tmp_path):
    p = tmp_path / "netstat"
    p.write_text("TcpExt: ListenOverflows ListenDrops\n")
    assert read_netstat(str(p)) == {}
    assert read_netstat(str(tmp_path / "absent")) == {}


def test_read_sockstat(tmp_path):
    p = tmp_path / "sockstat"
    p.write_text(SOCKSTAT)
    got = read_sockstat(str(p))
    assert got["sockets_used"] == 311
    assert (got["tcp_inuse"], got["tcp_orphan"], got["tcp_tw"], got["tcp_alloc"], got["tcp_mem"]) == (
        201,
        4,
        17,
        230,
        12,
    )
    assert got["udp_inuse"] == 3 and got["frag_memory"] == 0
    assert read_sockstat(str(tmp_path / "absent")) == {}


def test_kernel_snapshot(tmp_path):
    (tmp_path / "netstat").write_text(NETSTAT)
    (tmp_path / "sockstat").write_text(SOCKSTAT)
    (tmp_path / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable:     512 kB\n")
    snap = kernel_snapshot(str(tmp_path / "netstat"), str(tmp_path / "sockstat"), str(tmp_path / "meminfo"))
    assert snap == {
        "tcp_inuse": 201,
        "tcp_tw": 17,
        "tcp_orphan": 4,
        "tcp_mem_pages": 12,
        "tcp_alloc": 230,
        "sockets_used": 311,
        "listen_overflows": 17,
        "listen_drops": 19,
        "abort_on_overflow": 2,
        "syncookies_sent": 3,
        "mem_available_bytes": 512 * 1024,
    }


def test_kernel_snapshot_missing_files(tmp_path):
    assert kernel_snapshot(str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")) == {}
    (tmp_path / "sockstat").write_text(SOCKSTAT)
    snap = kernel_snapshot(str(tmp_path / "a"), str(tmp_path / "sockstat"), str(tmp_path / "c"))
    assert set(snap) == {"tcp_inuse", "tcp_tw", "tcp_orphan", "tcp_mem_pages", "tcp_alloc", "sockets_used"}


@pytest.mark.skipif(not os.path.exists("/proc/net/sockstat"), reason="needs Linux /proc")
def test_kernel_snapshot_real():
    snap = kernel_snapshot()
    assert all(isinstance(v, int) for v in snap.values())
    assert "tcp_inuse" in snap


# --- advice -----------------------------------------------------------------


def test_advice_covers_causes():
    expected = {
        "EMFILE",
        "ENFILE",
        "EADDRNOTAVAIL",
        "EADDRINUSE",
        "ECONNREFUSED",
        "ECONNRESET",
        "ETIMEDOUT",
        "no_answer_from_server",
        "closed_by_peer",
        "protocol_error",
        "worker_lost",
    }
    assert expected <= set(CAUSES)
    for cause in CAUSES:
        text = advise(cause)
        assert text and "\n" not in text and text.endswith("."), cause


def test_advice_content():
    assert "--workers" in advise("EMFILE") and "ulimit -Hn" in advise("EMFILE")
    assert "fs.file-max" in advise("ENFILE")
    for cause in ("EADDRNOTAVAIL", "EADDRINUSE"):
        text = advise(cause)
        assert "--source-ip 127.0.0.2-127.0.0.9" in text
        assert "ip_local_port_range" in text and "server ports" in text
    reset = advise("ECONNRESET")
    for needle in ("ListenOverflows", "--backlog", "somaxconn", "tcp_max_syn_backlog", "--rate"):
        assert needle in reset
    assert "SYN" in advise("ETIMEDOUT")
    assert "--timeout" in advise("no_answer_from_server")
    assert "restart" in advise("closed_by_peer")


def test_advise_unknown_cause_is_generic():
    text = advise("EWHATEVER")
    assert "EWHATEVER" in text and "\n" not in text


def test_advice_is_read_only():
    with pytest.raises(TypeError):
        CAUSES["EMFILE"] = "x"  # type: ignore[index]


# --- process resources ------------------------------------------------------


def test_process_resources_self():
    res = process_resources(os.getpid())
    # fds only on request: listing /proc/PID/fd is costly at scale.
    assert set(res) == {"rss_bytes", "cpu_user_s", "cpu_system_s", "threads"}
    assert res["rss_bytes"] > 0 and res["threads"] >= 1
    assert all(isinstance(v, float) for v in res.values())
    assert process_resources().keys() == res.keys()
    counted = process_resources(count_fds=True)
    assert set(counted) == set(res) | {"fds"} and counted["fds"] >= 3


def test_process_resources_missing_process():
    # pid_max is at most 2**22 on Linux, so this pid cannot exist.
    assert process_resources(2**31 - 2) == {}
    assert process_resources(-5) == {}
