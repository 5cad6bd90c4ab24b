"""Isolated test hosts as Linux network namespaces.

Topology of ``TestNetwork(n)`` with prefix P (``cs<pid>n<k>``)::

    netns P"br":   bridge br0 <- v1 ... vN          (no IP address)
                                 |        |
    netns P"h1":  eth0 198.18.0.1/24      |
    netns P"hN":            eth0 198.18.0.N/24

Every veth pair is created *inside* the bridge namespace with its peer moved
straight into the host namespace, so the machine's root namespace never holds
an end, an address or a route of the test network.  No namespace has a
default route.  Addresses come from the benchmark range 198.18.0.0/15 (and
are enforced to stay inside it).

Usage::

    from tests.support.netns import TestNetwork, netns_available

    @pytest.mark.skipif(not netns_available(), reason="needs root + ip netns")
    def test_x():
        with TestNetwork(2) as net:
            h1, h2 = net.hosts
            srv = h2.popen([sys.executable, "-m", "http.server", "8000"])
            h1.run(["curl", "http://%s:8000/" % h2.ip], check=True)

Cleanup (``close()``, also run if setup fails and at interpreter exit if
forgotten) kills the processes started with ``Host.popen`` (by pid), then
any process still inside one of *our* namespaces (``ip netns pids``; only
we put processes there), then ``ip netns del`` every namespace created.
"""

from __future__ import annotations

import atexit
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Mapping, Sequence

IP_BIN = shutil.which("ip") or "/usr/sbin/ip"
SYSCTL_BIN = shutil.which("sysctl") or "/usr/sbin/sysctl"

#: The only range test addresses may come from (RFC 2544 benchmark range).
ALLOWED_RANGE = ipaddress.ip_network("198.18.0.0/15")

#: Per-namespace sysctls applied in each host namespace.
DEFAULT_SYSCTLS: dict[str, str] = {
    "net.ipv4.ip_local_port_range": "10000 65000",
    "net.core.somaxconn": "65535",
}

_counter = itertools.count()
_NAME_RE = re.compile(r"^cs(\d+)n\d+(br|h\d+)$")


def _ip(*args: str, check: bool = True, input: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run([IP_BIN, *args], input=input, capture_output=True,
                       text=True, timeout=timeout, stdin=None
                       if input is not None else subprocess.DEVNULL)
    if check and r.returncode != 0:
        raise NetnsError("ip %s failed (rc=%s): %s"
                         % (" ".join(args), r.returncode,
                            (r.stderr or r.stdout).strip()))
    return r


class NetnsError(RuntimeError):
    pass


def _check_allowed(iface: ipaddress.IPv4Interface) -> None:
    if not iface.network.subnet_of(ALLOWED_RANGE):
        raise ValueError("%s is outside %s: test networks must only use the "
                         "benchmark range" % (iface, ALLOWED_RANGE))


def list_namespaces() -> list[str]:
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


_available: bool | None = None


def netns_available() -> bool:
    """True if we are root and can create a namespace with a bridge and a
    veth pair (probe is cached).  Use for ``pytest.mark.skipif``."""
    global _available
    if _available is None:
        _available = _probe()
    return _available


def _probe() -> bool:
    if os.geteuid() != 0 or not os.path.exists(IP_BIN):
        return False
    name = "cs%dprobe" % os.getpid()
    try:
        if _ip("netns", "add", name, check=False).returncode != 0:
            return False
        ok = (_ip("-n", name, "link", "add", "pbr0", "type", "bridge",
                  check=False).returncode == 0
              and _ip("-n", name, "link", "add", "pv0", "type", "veth",
                      "peer", "name", "pv1", check=False).returncode == 0
              and subprocess.run([IP_BIN, "netns", "exec", name, "true"],
                                 capture_output=True).returncode == 0)
        return ok
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        _ip("netns", "del", name, check=False)


def cleanup_stale_namespaces() -> list[str]:
    """Delete namespaces named like ours (``cs<pid>n<k>...``) whose creating
    pid is dead (left over by a killed test run).  Returns deleted names."""
    deleted = []
    for name in list_namespaces():
        m = _NAME_RE.match(name)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            _kill_ns_pids(name)
            if _ip("netns", "del", name, check=False).returncode == 0:
                deleted.append(name)
    return deleted


def _kill_ns_pids(ns: str) -> None:
    r = _ip("netns", "pids", ns, check=False)
    pids = [int(p) for p in r.stdout.split() if p.isdigit()]
    pids = [p for p in pids if p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            r = _ip("netns", "pids", ns, check=False)
            left = set(int(p) for p in r.stdout.split() if p.isdigit())
            pids = [p for p in pids if p in left]
            if not pids:
                return
            time.sleep(0.05)


class Host:
    """One test host: a network namespace with ``lo`` and ``eth0``."""

    def __init__(self, network: "TestNetwork", name: str, ns: str, ip: str,
                 prefixlen: int):
        self.network = network
        self.name = name          # "h1"
        self.ns = ns              # "cs1234n0h1"
        self.ip = ip              # "198.18.0.1"
        self.prefixlen = prefixlen
        self.ifname = "eth0"
        self.addresses: list[str] = [ip]

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this host's namespace."""
        return [IP_BIN, "netns", "exec", self.ns, *map(str, argv)]

    def run(self, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside the namespace (kwargs passed through;
        stdin defaults to DEVNULL)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.argv(argv), **kw)

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """``subprocess.Popen`` inside the namespace; the process is killed
        (by pid) when the network closes.  ``ip netns exec`` execs, so
        ``proc.pid`` is the command itself."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.argv(argv), **kw)
        self.network._procs.append(proc)
        return proc

    def add_address(self, ip: str, prefixlen: int = 24) -> str:
        """Add another (source) address to eth0, e.g. ``198.18.1.5`` (a /24
        unless ``ip`` carries ``/len``).  Hosts given addresses in the same
        extra subnet reach each other over the bridge.  Returns the bare
        address."""
        iface = ipaddress.IPv4Interface(ip if "/" in ip
                                        else "%s/%d" % (ip, prefixlen))
        _check_allowed(iface)
        _ip("-n", self.ns, "addr", "add", str(iface), "dev", self.ifname)
        addr = str(iface.ip)
        self.addresses.append(addr)
        return addr

    def __repr__(self) -> str:
        return "<Host %s ns=%s ip=%s>" % (self.name, self.ns, self.ip)


class TestNetwork:
    """``n_hosts`` namespaces joined by a bridge living in its own namespace.

    :param n_hosts: number of hosts, h1..hN (host i gets ``subnet[i]``).
    :param subnet: must lie within 198.18.0.0/15.
    :param sysctls: per-namespace sysctls for each host ns
        (default :data:`DEFAULT_SYSCTLS`).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, n_hosts: int = 2, subnet: str = "198.18.0.0/24",
                 prefix: str | None = None,
                 sysctls: Mapping[str, str] | None = None):
        self.subnet = ipaddress.IPv4Network(subnet)
        _check_allowed(ipaddress.IPv4Interface(str(self.subnet)))
        if n_hosts < 1 or n_hosts > self.subnet.num_addresses - 2:
            raise ValueError("n_hosts=%d does not fit %s" % (n_hosts, subnet))
        self.n_hosts = n_hosts
        self.prefix = prefix or "cs%dn%d" % (os.getpid(), next(_counter))
        self.bridge_ns = self.prefix + "br"
        self.sysctls = dict(DEFAULT_SYSCTLS if sysctls is None else sysctls)
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []   # created by us, in creation order
        self._procs: list[subprocess.Popen] = []
        self._closed = False

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def __enter__(self) -> "TestNetwork":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, name: str) -> None:
        if name in list_namespaces():
            raise NetnsError("namespace %s already exists" % name)
        _ip("netns", "add", name)
        self.namespaces.append(name)

    def start(self) -> "TestNetwork":
        atexit.register(self.close)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _setup(self) -> None:
        plen = self.subnet.prefixlen
        self._add_ns(self.bridge_ns)
        for i in range(1, self.n_hosts + 1):
            h = Host(self, "h%d" % i, "%sh%d" % (self.prefix, i),
                     str(self.subnet[i]), plen)
            self._add_ns(h.ns)
            self.hosts.append(h)

        # Bridge namespace: bridge + one veth per host, created here with
        # the peer going straight into the host ns (never the root ns).
        cmds = ["link set lo up",
                "link add br0 type bridge",
                "link set br0 up"]
        for i, h in enumerate(self.hosts, 1):
            cmds += ["link add v%d type veth peer name eth0 netns %s"
                     % (i, h.ns),
                     "link set v%d master br0" % i,
                     "link set v%d up" % i]
        _ip("-n", self.bridge_ns, "-batch", "-",
            input="\n".join(cmds) + "\n")

        for h in self.hosts:
            _ip("-n", h.ns, "-batch", "-", input="\n".join([
                "link set lo up",
                "addr add %s/%d dev eth0" % (h.ip, plen),
                "link set eth0 up",
            ]) + "\n")
            if self.sysctls:
                r = subprocess.run(
                    h.argv([SYSCTL_BIN, "-q", "-w",
                            *("%s=%s" % kv for kv in self.sysctls.items())]),
                    capture_output=True, text=True,
                    stdin=subprocess.DEVNULL, timeout=30)
                if r.returncode != 0:
                    raise NetnsError("sysctl in %s failed: %s"
                                     % (h.ns, r.stderr.strip()))

    def close(self) -> None:
        """Kill our processes, delete our namespaces.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        errors = []
        # hosts first, bridge ns (created first) last
        for ns in reversed(self.namespaces):
            try:
                _kill_ns_pids(ns)
            except Exception as e:  # keep deleting the rest
                errors.append("%s: %s" % (ns, e))
            r = _ip("netns", "del", ns, check=False)
            if r.returncode != 0:
                errors.append("ip netns del %s: %s" % (ns, r.stderr.strip()))
        self.namespaces = []
        if errors:
            raise NetnsError("TestNetwork cleanup failed: " + "; ".join(errors))

    def __repr__(self) -> str:
        return "<TestNetwork %s hosts=%s>" % (self.prefix,
                                              [h.ip for h in self.hosts])
