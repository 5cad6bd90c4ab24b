"""The capacity budget (`connscale check`): host readers over invented /proc
trees, the reasoning over invented hosts, and the command against real hosts
with known limits (prlimit, a network namespace with its own sysctls)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from connscale.config.loader import parse_config
from connscale.diagnose.budget import budget, more_sources, render
from connscale.diagnose.capacity import Demand
from connscale.host.inventory import HostLimits, read_cpu_quota, read_host_limits, read_meminfo
from tests.support.netns import TestNetwork, netns_available

GIB = 2**30

#: A roomy host: nothing binds below a few hundred thousand.
ROOMY = HostLimits(
    hostname="box", kernel="6.1", cores=8, nofile_soft=1024, nofile_hard=1_048_576, nr_open=1_048_576,
    file_max=10_000_000, files_allocated=5_000, port_range=(1024, 65535), somaxconn=65535,
    tcp_max_syn_backlog=65535, syncookies=1, tcp_mem=(1_000_000, 2_000_000, 3_000_000), page_size=4096,
    mem_total=128 * GIB, mem_available=120 * GIB,
)


def demand(**kw) -> Demand:
    base = dict(target=100_000, roles="both", source_ips=("127.0.0.2", "127.0.0.3"), server_ports=4,
                per_route_max=14_000, interval=30.0, rate=2000.0, backlog=4096)
    base.update(kw)
    return Demand(**base)


def limit(b, key, side=None):
    found = [lim for lim in b.limits if lim.key == key and (side is None or lim.side == side)]
    assert found, f"no {key} limit in {[lim.key for lim in b.limits]}"
    return found[0]


# --- readers ------------------------------------------------------------------------------


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


#: The invented host's /proc (its cgroup file apart: each test names its own).
FAKE_PROC = {
    "sys/fs/nr_open": "1048576\n",
    "sys/fs/file-max": "500000\n",
    "sys/fs/file-nr": "1234\t0\t500000\n",
    "sys/net/ipv4/ip_local_port_range": "40000\t40999\n",
    "sys/net/ipv4/ip_local_reserved_ports": "40000-40099\n",
    "sys/net/core/somaxconn": "128\n",
    "sys/net/ipv4/tcp_max_syn_backlog": "256\n",
    "sys/net/ipv4/tcp_syncookies": "1\n",
    "sys/net/ipv4/tcp_abort_on_overflow": "0\n",
    "sys/net/ipv4/tcp_mem": "100\t200\t300\n",
    "sys/net/netfilter/nf_conntrack_max": "65536\n",
    "sys/net/netfilter/nf_conntrack_count": "17\n",
    "meminfo": "MemTotal:       2048000 kB\nMemAvailable:   1024000 kB\nHugePages_Total:       0\n",
}

#: Its /sys: a cgroup v1 hierarchy for the cgroup "/box".
FAKE_SYS = {
    "fs/cgroup/memory/box/memory.limit_in_bytes": str(512 * 2**20),
    "fs/cgroup/memory/box/memory.usage_in_bytes": str(112 * 2**20),
    "fs/cgroup/cpu/box/cpu.cfs_quota_us": "150000",
    "fs/cgroup/cpu/box/cpu.cfs_period_us": "100000",
}


def fake_proc(tmp: Path, cgroup: str = "4:memory:/box\n2:cpu:/box\n0::/box\n") -> tuple[str, str]:
    proc, sysr = tmp / "proc", tmp / "sys"
    for root, files in ((proc, {**FAKE_PROC, "self/cgroup": cgroup}), (sysr, FAKE_SYS)):
        for rel, text in files.items():
            write(root, rel, text)
    return str(proc), str(sysr)


def test_host_limits_read_from_proc_and_cgroup_v1(tmp_path):
    proc, sysr = fake_proc(tmp_path)
    h = read_host_limits(proc, sysr, getrlimit=lambda _: (1024, 4096))
    assert (h.nofile_soft, h.nofile_hard, h.nr_open) == (1024, 4096, 1_048_576)
    assert (h.file_max, h.files_allocated) == (500_000, 1234)
    assert h.port_range == (40000, 40999) and h.ephemeral_ports == 1000
    assert h.reserved_ports == "40000-40099"
    assert (h.somaxconn, h.tcp_max_syn_backlog, h.syncookies, h.abort_on_overflow) == (128, 256, 1, 0)
    assert h.tcp_mem == (100, 200, 300)
    assert (h.conntrack_max, h.conntrack_count) == (65536, 17)
    assert h.mem_total == 2048000 * 1024 and h.mem_available == 1024000 * 1024
    assert h.cgroup_mem_limit == 512 * 2**20 and h.cgroup_mem_usage == 112 * 2**20
    # The cgroup leaves 400 MiB, less than MemAvailable: that is what connections may take.
    assert h.usable_memory == 400 * 2**20
    assert h.cpu_quota == 1.5 and h.effective_cores == min(h.cores, 1.5)


def test_cgroup_v2_quota_and_unlimited_memory(tmp_path):
    proc, sysr = fake_proc(tmp_path, cgroup="0::/job\n")
    write(Path(sysr), "fs/cgroup/job/cpu.max", "50000 100000\n")
    write(Path(sysr), "fs/cgroup/job/memory.max", "max\n")
    write(Path(sysr), "fs/cgroup/job/memory.current", "123\n")
    assert read_cpu_quota(proc, sysr) == 0.5
    h = read_host_limits(proc, sysr)
    assert h.cgroup_mem_limit is None and h.usable_memory == h.mem_available
    write(Path(sysr), "fs/cgroup/job/cpu.max", "max 100000\n")
    assert read_cpu_quota(proc, sysr) is None


def test_unreadable_limits_are_none_not_zero(tmp_path):
    h = read_host_limits(str(tmp_path / "nothing"), str(tmp_path / "nothing"))
    assert h.file_max is None and h.port_range is None and h.mem_available is None and h.conntrack_max is None
    b = budget(h, demand())
    # Nothing unreadable is mistaken for a limit of zero.
    assert all(lim.capacity is None or lim.capacity > 0 for lim in b.limits)
    assert limit(b, "fd_system").detail == "fs.file-max unreadable"
    assert read_meminfo(str(tmp_path / "none")) == {}


def test_host_limits_cross_pb_and_json_as_plain_data():
    data = json.loads(json.dumps(ROOMY.to_dict()))
    assert data["port_range"] == [1024, 65535]
    assert HostLimits.from_dict(data) == ROOMY
    # An older agent without some keys, or a newer one with more, still counts.
    data.pop("tcp_mem")
    data["something_new"] = 1
    assert HostLimits.from_dict(data).tcp_mem is None


def test_the_real_host_reads():
    h = read_host_limits()
    assert h.nofile_hard == resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert h.cores >= 1 and h.mem_total and h.mem_available and h.port_range


# --- reasoning ------------------------------------------------------------------------------


def test_a_roomy_host_reaches_the_target():
    b = budget(ROOMY, demand())
    assert b.ok and b.reachable == 100_000 and b.binding is None and b.reason() == ""
    assert "can reach 100,000" in render(b)[-1]


def test_routes_bind_first_and_the_fix_names_the_source_ips():
    b = budget(ROOMY, demand(target=500_000, source_ips=("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"),
                             server_ports=2))
    assert not b.ok and b.binding is not None and b.binding.key == "routes"
    assert b.reachable == 4 * 2 * 14_000
    # 500,000 / (2 ports x 14,000) = 17.9: 18 source IPs, extending the configured range.
    assert "client.source_ips: 127.0.0.2-127.0.0.19" in b.binding.fix
    text = "\n".join(render(b))
    assert "routes" in text and "binds first" in text and "reaches 112,000 of 500,000" in text
    assert more_sources((), 3) == "client.source_ips: 127.0.0.2-127.0.0.4"


def test_a_narrow_ephemeral_range_binds_before_the_route_quota():
    host = attrs.evolve(ROOMY, port_range=(40000, 40999), reserved_ports="40000-40099,50000")
    b = budget(host, demand(target=20_000))
    assert b.binding is not None and b.binding.key == "ephemeral_ports"
    # 2 IPs x 4 ports x (1000 - 100 reserved) ports.
    assert b.binding.capacity == 2 * 4 * 900
    assert "ip_local_port_range 40000-40999, minus 100 reserved" in b.binding.detail
    assert "sysctl -w net.ipv4.ip_local_port_range='1024 65535'" in b.binding.fix


def test_a_low_hard_nofile_binds_the_workers_and_the_fix_is_a_ulimit():
    host = attrs.evolve(ROOMY, nofile_hard=300)  # 200 per worker, 190 after the 95 % fill
    b = budget(host, demand(target=60_000))
    lim = b.binding
    assert lim is not None and lim.key == "fd_process"
    assert lim.capacity == 256 * 190
    assert "ulimit -Hn 1048576" in lim.fix and "fs.nr_open=1048576" in lim.fix


def test_configured_workers_bind_and_the_fix_is_more_workers():
    b = budget(ROOMY, demand(target=100_000, client_workers=2))
    client = limit(b, "fd_process", "client")
    per = int((1_048_576 - 100) * 0.95)
    assert client.capacity == 2 * per  # far above 100,000: not binding
    host = attrs.evolve(ROOMY, nofile_hard=20_000)
    b = budget(host, demand(target=100_000, client_workers=2))
    assert b.binding is not None and b.binding.key == "fd_process" and b.binding.side == "client"
    assert b.binding.fix == "client.workers: 6 (or auto)"


def test_system_file_limit_counts_two_fds_per_local_pair():
    host = attrs.evolve(ROOMY, file_max=205_000, files_allocated=5_000)
    b = budget(host, demand(target=150_000))
    assert b.binding is not None and b.binding.key == "fd_system" and b.binding.capacity == 100_000
    assert b.binding.fix == "sysctl -w fs.file-max=610000"
    # An agent host holds one fd per connection.
    assert budget(host, demand(target=150_000, roles="client", source_ips=("127.0.0.2", "127.0.0.3", "127.0.0.4"))).ok


def test_memory_binds_on_a_small_host_and_under_a_cgroup_limit():
    small = attrs.evolve(ROOMY, mem_total=2 * GIB, mem_available=1 * GIB)
    b = budget(small, demand(target=100_000))
    assert b.binding is not None and b.binding.key == "memory"
    from connscale.diagnose import budget as B
    from connscale.diagnose.costs import WORKER_BYTES

    d = demand(target=100_000)
    per_conn = B.bytes_per_connection(d) + 2 * WORKER_BYTES / int((1_048_576 - 100) * 0.95)
    assert b.binding.capacity == int(1 * GIB * B.MEMORY_SHARE / per_conn)
    caged = attrs.evolve(ROOMY, cgroup_mem_limit=1 * GIB, cgroup_mem_usage=0)
    lim = limit(budget(caged, demand(target=100_000)), "memory")
    assert lim.capacity == b.binding.capacity and "cgroup" in lim.detail


def test_conntrack_binds_only_when_it_tracks():
    quiet = attrs.evolve(ROOMY, conntrack_max=65_536, conntrack_count=0)
    assert limit(budget(quiet, demand()), "conntrack").capacity is None
    tracking = attrs.evolve(ROOMY, conntrack_max=65_536, conntrack_count=536)
    b = budget(tracking, demand())
    assert b.binding is not None and b.binding.key == "conntrack" and b.binding.capacity == 65_000
    assert b.binding.fix == "sysctl -w net.netfilter.nf_conntrack_max=120643"


def test_cpu_binds_and_a_longer_interval_is_the_fix_while_holding_fits():
    two = attrs.evolve(ROOMY, cores=2)
    ips = tuple(f"127.0.0.{i}" for i in range(2, 30))
    b = budget(two, demand(target=300_000, interval=5.0, source_ips=ips))
    assert b.binding is not None and b.binding.key == "cpu"
    assert b.binding.fix.startswith("client.interval: ")
    longer = int(b.binding.fix.split()[1])
    # The interval the fix names is enough, and a second shorter is not.
    assert budget(two, demand(target=300_000, interval=longer, source_ips=ips)).ok
    assert not budget(two, demand(target=300_000, interval=longer - 1, source_ips=ips)).ok
    # Past what holding alone costs, no interval helps: the clients must move.
    import ipaddress

    many = tuple(str(ipaddress.ip_address("10.0.0.1") + i) for i in range(200))
    huge = budget(two, demand(target=6_000_000, interval=5.0, source_ips=many))
    assert "whatever the interval" in limit(huge, "cpu").fix


def test_a_cgroup_cpu_quota_lowers_the_cpu_capacity():
    full = limit(budget(ROOMY, demand()), "cpu").capacity
    quota = limit(budget(attrs.evolve(ROOMY, cpu_quota=2.0), demand()), "cpu").capacity
    assert quota == pytest.approx(full / 4, rel=0.01)


def test_a_backlog_above_somaxconn_is_a_warning_with_the_sysctl():
    host = attrs.evolve(ROOMY, somaxconn=128)
    b = budget(host, demand(backlog=4096))
    aq = limit(b, "accept_queue")
    assert aq.warn and aq.capacity is None and "sysctl -w net.core.somaxconn=4096" in aq.fix
    assert any("somaxconn" in w for w in b.to_dict()["warnings"])
    assert not limit(budget(ROOMY, demand(backlog=4096)), "accept_queue").warn
    # An agent host has no listener to warn about.
    assert all(lim.key != "accept_queue" for lim in budget(host, demand(roles="client")).limits)


def test_a_run_whose_ramp_cannot_fit_its_time_limit():
    b = budget(ROOMY, demand(target=300_000, source_ips=tuple(f"127.0.0.{i}" for i in range(2, 10)),
                             rate=2000, time_limit=110, holds=22))
    lim = b.binding
    assert lim is not None and lim.key == "time_limit" and lim.capacity == 2000 * (110 - 22 - 10)
    assert lim.fix == f"scenario.time_limit: {int((300_000 / 2000 + 32) * 1.2) + 1}"


def test_demand_from_the_shipped_config():
    cfg = parse_config({"server": {"ports": "8989-8990"}, "client": {"source_ips": "127.0.0.2-127.0.0.5"},
                        "scenario": {"target": 50_000, "steps": 5, "hold": 3, "final_hold": 10}})
    d = Demand.from_config(cfg)
    assert (d.target, d.routes, d.server_ports, d.holds, d.time_limit) == (50_000, 8, 2, 22.0, 110.0)
    agent = Demand.from_config(cfg, roles="client")
    assert agent.target == cfg.client.connections and agent.time_limit is None
    assert Demand.from_config(cfg, 7, "server").target == 7


# --- the command against real hosts ----------------------------------------------------------


def check(*args: str, prefix: tuple[str, ...] = (), cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([*prefix, sys.executable, "-m", "connscale", "check", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


def config(tmp: Path, server: str = "{ports: 8989-8990}") -> Path:
    path = tmp / "c.yaml"
    path.write_text(
        f"server: {server}\n"
        "client: {source_ips: 127.0.0.2-127.0.0.5}\n"
        "scenario: {target: 1000, time_limit: 600}\n"
    )
    return path


def test_check_command_on_this_host(tmp_path):
    r = check("-c", str(config(tmp_path)), "--target", "1e6")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "routes" in r.stdout and "binds first" in r.stdout and "reaches 112,000 of 1,000,000" in r.stdout
    assert "client.source_ips: 127.0.0.2-127.0.0.37" in r.stdout
    ok = check("-c", str(config(tmp_path)), "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    data = json.loads(ok.stdout)
    assert data["ok"] and data["reachable"] == 1000 and data["host_limits"]["port_range"]
    bad = check("-c", str(config(tmp_path)), "--target", "lots")
    assert bad.returncode == 2 and "scenario.target" in bad.stderr


@pytest.mark.skipif(not shutil.which("prlimit"), reason="prlimit (util-linux) missing")
def test_check_under_a_lowered_hard_nofile(tmp_path):
    # A host whose processes get at most 300 fds: 256 workers x 190 connections.
    r = check("-c", str(config(tmp_path)), "--target", "60000", prefix=("prlimit", "--nofile=300:300"))
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(line for line in r.stdout.splitlines() if "binds first" in line)
    assert line.split()[0] == "fd_process" and "48,640" in line and "RLIMIT_NOFILE hard 300" in line
    assert "ulimit -Hn" in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not netns_available(), reason="needs root + ip netns")
def test_check_inside_a_namespace_with_a_narrow_port_range(tmp_path):
    sysctls = {"net.ipv4.ip_local_port_range": "40000 40499", "net.core.somaxconn": "64"}
    with TestNetwork(1, sysctls=sysctls) as net:
        (host,) = net.hosts
        r = check("-c", str(config(tmp_path, "{ports: 8989-8990, backlog: 1024}")), "--target", "5000",
                  prefix=tuple(host.argv([])))
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(line for line in r.stdout.splitlines() if "binds first" in line)
    # 4 source IPs x 2 ports x 500 ports in this namespace.
    assert line.split()[0] == "ephemeral_ports" and "4,000" in line and "40000-40499" in line
    assert "sysctl -w net.core.somaxconn=" in r.stdout  # the namespace's own somaxconn of 64


def test_a_fleet_is_bound_by_its_server_or_by_its_clients_together():
    from connscale.diagnose.fleetcheck import HostShare, fleet, render_fleet

    narrow = attrs.evolve(ROOMY, hostname="a1", port_range=(40000, 40999))
    hosts = [
        HostShare("hub", ROOMY, demand(target=50_000, roles="server")),
        HostShare("a1", narrow, demand(target=50_000, roles="client", source_ips=("10.0.0.2",), server_ports=2)),
        HostShare("a2", attrs.evolve(narrow, hostname="a2"),
                  demand(target=50_000, roles="client", source_ips=("10.0.0.3",), server_ports=2)),
    ]
    result = fleet(50_000, hosts)
    assert not result.ok and result.reachable == 4000
    assert result.binding is not None and result.binding.side == "clients"
    assert result.binding.limit is not None and result.binding.limit.key == "ephemeral_ports"
    text = render_fleet(result)
    assert "the client sides together reach 4,000 of 50,000" in text and "more agents" in text
    # Every fix names the host it is for; the same answer, as it crossed PB, prints the same.
    assert "fix on a1 (a1): ephemeral_ports:" in text and "fix on a2 (a2): ephemeral_ports:" in text
    assert render_fleet(result.to_wire()) == text
    # A server host with a low file limit binds the fleet from the other side.
    small_hub = attrs.evolve(ROOMY, nofile_hard=300)
    result = fleet(50_000, [HostShare("hub", small_hub, demand(target=50_000, roles="server")),
                            HostShare("a1", ROOMY, demand(target=50_000, roles="client"))])
    assert result.binding is not None and result.binding.side == "server"
    assert result.binding.limit is not None and result.binding.limit.key == "fd_process"
    assert "fix on hub" in render_fleet(result) and "fix on a1" not in render_fleet(result)
    assert fleet(1000, [HostShare("hub", ROOMY, demand(target=1000, roles="server"))]).ok


def test_tls_connections_are_planned_with_what_tls_costs():
    """A TLS connection holds OpenSSL's state on each side and costs a handshake: the same host
    reaches far fewer of them, and the check says why."""
    from connscale.diagnose.costs import TLS_USER_BYTES

    host = attrs.evolve(ROOMY, mem_available=24 * GIB, cores=2)
    plain = budget(host, demand(target=1_000_000, source_ips=tuple(f"127.0.0.{i}" for i in range(2, 40))))
    tls = budget(host, demand(target=1_000_000, source_ips=tuple(f"127.0.0.{i}" for i in range(2, 40)), tls=True))
    memory = limit(tls, "memory")
    assert memory.capacity is not None and memory.capacity < limit(plain, "memory").capacity / 3
    assert "with TLS" in memory.detail and TLS_USER_BYTES["client"] > 10_000
    # The shipped settings in YAML say it the same way: server.tls on means the run's clients speak TLS.
    cfg = parse_config({"server": {"tls": "auto"}})
    assert Demand.from_config(cfg).tls and not Demand.from_config(parse_config({})).tls
    assert Demand.from_config(parse_config({"client": {"tls": True}}), roles="client").tls
    # A fleet's hosts the same way: the hub's server pays for TLS, an agent's clients when they speak it.
    from connscale.diagnose.fleetcheck import fleet_demand

    assert fleet_demand(cfg, 1000, "server").tls and not fleet_demand(cfg, 1000, "client", "h2").tls
    assert not fleet_demand(parse_config({}), 1000, "server").tls


def test_a_fleets_target_is_split_by_what_each_host_reaches():
    from connscale.diagnose.fleetcheck import HostShare, fleet, render_split, split

    def agent(name: str, ips: tuple[str, ...]) -> HostShare:
        return HostShare(name, attrs.evolve(ROOMY, hostname=name),
                         demand(target=9000, roles="client", source_ips=ips, server_ports=2, per_route_max=2000))

    # Two addresses against one: 8,000 and 4,000 connections by their routes.
    result = fleet(9000, [HostShare("hub", ROOMY, demand(target=9000, roles="server")),
                          agent("wide", ("198.18.0.2", "198.18.0.12")), agent("narrow", ("198.18.0.3",))])
    assert result.ok and [h.capacity for h in result.client_hosts()] == [8000, 4000]
    shares = split(9000, result.client_hosts())
    assert [(s.agent, s.share, s.capacity, s.limit) for s in shares] == [
        ("wide", 6000, 8000, "routes"), ("narrow", 3000, 4000, "routes")]
    assert "1 source IP x 2 server ports x 2,000 per route" in shares[1].why
    assert render_split(shares, 9000)[1].startswith("narrow on narrow: 3,000 of 9,000 (reaches 4,000; routes")
    # Whole connections that add up to the target; never more than a host reaches.
    odd = split(10, result.client_hosts()[:1] + result.client_hosts())
    assert sum(s.share for s in odd) == 10
    short = split(20_000, result.client_hosts())
    assert [s.share for s in short] == [8000, 4000]
    # Evenly by count would have asked 4,500 of the narrow host: more than it reaches.
    assert split(3, result.client_hosts()[1:]) [0].share == 3


def test_a_fix_for_a_remote_host_names_its_entry_not_a_loopback_range():
    d = demand(target=100_000, roles="client", source_ips=(), server_ports=1, source_key="clients.h2.source_ips",
               server_loopback=False)
    routes = next(lim for lim in budget(ROOMY, d).limits if lim.key == "routes")
    assert routes.fix is not None and routes.fix.startswith("clients.h2.source_ips: 8 addresses of that host")
    assert "127.0.0" not in routes.fix
