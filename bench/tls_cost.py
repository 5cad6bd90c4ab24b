#!/usr/bin/env python3
"""What TLS costs per connection, and on which transports connscale should carry it.

One server process and one client process (forked), on loopback, for each variant:

  plain    connscale's lean transports, no TLS (the reference)
  lean     connscale's lean transports + net/tls.py (the stdlib's ssl over MemoryBIOs):
           what connscale ships
  twisted  Twisted's stock TCP transports + twisted.protocols.tls.TLSMemoryBIOFactory
           (pyOpenSSL), server and client; the same pool, protocols and timer wheel

Both TLS variants use the same ECDSA P-256 certificate (made here, in a temp dir) and
verify it. Two rounds per variant, N connections each:

  connect  interval 600 s (no pings): the client opens N at --rate connects/s.
           CPU per connect of each process (/proc/PID/stat), TCP and TLS together
           (minus plain's: the handshake); then, once every handshake has settled,
           user memory per held connection per side = (RSS_N - RSS_0) / N, RSS_0
           read with both loops running and nothing connected. `lean` then closes
           every connection and opens N again: each resumes the session its route
           left, and the CPU per connect and the handshake times (the pool's own
           histogram, TCP connected to TLS ready) of both rounds are printed.
  rtt      interval 1 s: N pings a second; after interval+3 s, CPU over --window
           seconds divided by the pongs in it: µs per round trip per side.

    python3 bench/tls_cost.py -n 10000 --rate 1000              # the figures in docs/design.md
    python3 bench/tls_cost.py -n 2000 --variants lean,twisted   # quicker
Everything is bounded in time and stopped by pid.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

VARIANTS = ("plain", "lean", "twisted")
LIMIT_S = 180.0


def cpu_s(pid: int) -> float:
    f = c.stat_fields(pid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK") if f else 0.0


# ---------------------------------------------------------------- the two processes

def _reactor() -> Any:
    from twisted.internet.epollreactor import EPollReactor

    return EPollReactor()


def _turn(reactor: Any, t: float = 0.05) -> None:
    reactor.runUntilCurrent()
    timeout = reactor.timeout()
    reactor.doIteration(t if timeout is None else min(timeout, t))


def serve_forever(variant: str, sock: Any, cert: str, key: str) -> None:
    from connscale.config.tls import ServerTLSSettings
    from connscale.metrics.counters import Counters
    from connscale.net.server import PingServerFactory, serve

    reactor = _reactor()
    counters = Counters()
    factory = PingServerFactory("line", counters)
    if variant == "twisted":
        from twisted.internet import ssl as tssl
        from twisted.protocols.tls import TLSMemoryBIOFactory

        options = tssl.PrivateCertificate.loadPEM(Path(cert).read_text() + Path(key).read_text()).options()
        # Twisted's own port, protocol and transports: no connscale loop on this reactor.
        reactor.adoptStreamPort(sock.fileno(), sock.family, TLSMemoryBIOFactory(options, False, factory, clock=reactor))
        sock.close()
    else:
        tls = ServerTLSSettings(enabled=True, cert=cert, key=key) if variant == "lean" else None
        serve(reactor, [sock], factory, tls)
    while True:
        _turn(reactor)


class TwistedTLSDial:
    """The pool's dial over Twisted's connectTCP + TLSMemoryBIOFactory (pyOpenSSL)."""

    def __init__(self, reactor: Any, pool_ref: list[Any], cert: str) -> None:
        from twisted.internet import ssl as tssl

        self.reactor = reactor
        self.pool_ref = pool_ref
        self.options = tssl.optionsForClientTLS("localhost", trustRoot=tssl.Certificate.loadPEM(Path(cert).read_text()))

    def __call__(self, route: Any, conn: Any) -> Any:
        from twisted.internet.protocol import ClientFactory
        from twisted.protocols.tls import TLSMemoryBIOFactory

        pool = self.pool_ref[0]

        class One(ClientFactory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Any:
                return conn

            def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
                pool.connect_failed(conn, reason)

        wrapped = TLSMemoryBIOFactory(self.options, True, One(), clock=self.reactor)
        wrapped.noisy = False
        return self.reactor.connectTCP(route.host, route.port, wrapped, bindAddress=(route.src, 0))


def client_forever(variant: str, port: int, cert: str, interval: float, rate: float, commands: int,
                   answers: int) -> None:
    from connscale.config.tls import ClientTLSSettings
    from connscale.metrics.histograms import buckets_to_histogram, rtt_summary_ms
    from connscale.net.pool import ConnectionPool, PoolSettings
    from connscale.net.routes import Route

    reactor = _reactor()
    routes = [Route(f"127.0.0.{2 + i}", "127.0.0.1", port, 14000) for i in range(2)]
    tls = ClientTLSSettings(enabled=True, ca_file=cert) if variant == "lean" else ClientTLSSettings()
    settings = PoolSettings(interval=interval, timeout=10.0, rate=rate, tls=tls, close="rst")
    holder: list[Any] = []
    dial = TwistedTLSDial(reactor, holder, cert) if variant == "twisted" else None
    pool = ConnectionPool(reactor, reactor, settings, routes, dial=dial)
    if dial is not None:
        # The pool paces and pings through Twisted's transports: no connscale loop at all.
        holder.append(pool)

    def say(data: dict[str, Any]) -> None:
        os.write(answers, (json.dumps(data) + "\n").encode())

    while True:
        _turn(reactor)
        if not select.select([commands], [], [], 0)[0]:
            continue
        command = os.read(commands, 64).decode().strip()
        if command.startswith("open"):
            n = int(command.split()[1])
            pool.counters.handshake.reset()
            pool.set_target(n)
            deadline = time.monotonic() + LIMIT_S
            while (pool.established < n) and time.monotonic() < deadline:
                _turn(reactor, 0.01)
            hist = buckets_to_histogram(pool.counters.handshake)
            say({"established": pool.established, "failures": {f"{p}:{k}": v for (p, k), v in
                                                                 pool.counters.failures.items()},
                 "handshake_ms": rtt_summary_ms(hist), "resumed": pool.counters.resumed})
        elif command == "close":
            pool.set_target(0)
            deadline = time.monotonic() + 30
            while pool.wanted() and time.monotonic() < deadline:
                _turn(reactor, 0.01)
            say({"established": pool.established})
        elif command == "pongs":
            say({"pongs": pool.counters.pongs, "failures": len(pool.counters.failures)})


# ---------------------------------------------------------------- the harness

class Pair:
    def __init__(self, variant: str, cert: str, key: str, interval: float, rate: float) -> None:
        from connscale.net.server import bind_sockets

        sock = bind_sockets("127.0.0.1", [0], 4096)[0]
        port = sock.getsockname()[1]
        self.server = os.fork()
        if self.server == 0:
            serve_forever(variant, sock, cert, key)
            os._exit(0)
        sock.close()
        cmd_r, self.cmd_w = os.pipe()
        self.ans_r, ans_w = os.pipe()
        self.client = os.fork()
        if self.client == 0:
            client_forever(variant, port, cert, interval, rate, cmd_r, ans_w)
            os._exit(0)
        self.buf = b""

    def ask(self, command: str, timeout: float = LIMIT_S + 10) -> dict[str, Any]:
        os.write(self.cmd_w, command.encode() + b"\n")
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.ans_r], [], [], left)[0]:
                raise SystemExit(f"tls_cost: no answer to {command!r} within {timeout:g} s")
            self.buf += os.read(self.ans_r, 65536)
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))

    def cpu(self) -> tuple[float, float]:
        return cpu_s(self.server), cpu_s(self.client)

    def rss(self) -> tuple[int, int]:
        return c.rss_bytes(self.server), c.rss_bytes(self.client)

    def stop(self) -> None:
        for pid in (self.client, self.server):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass


def connect_round(variant: str, n: int, rate: float, cert: str, key: str) -> dict[str, Any]:
    pair = Pair(variant, cert, key, interval=600.0, rate=rate)
    try:
        time.sleep(1.5)  # both loops running, contexts made
        rss0 = pair.rss()
        cpu0 = pair.cpu()
        opened = pair.ask(f"open {n}")
        cpu1 = pair.cpu()
        time.sleep(3.0)  # late handshakes, tickets read, allocator settled
        rss1 = pair.rss()
        out: dict[str, Any] = {
            "established": opened["established"], "failures": opened["failures"],
            "cpu_us_per_connect": {"server": (cpu1[0] - cpu0[0]) * 1e6 / n, "client": (cpu1[1] - cpu0[1]) * 1e6 / n},
            "bytes_per_conn": {"server": (rss1[0] - rss0[0]) / n, "client": (rss1[1] - rss0[1]) / n},
            "handshake_ms": opened["handshake_ms"],
        }
        if variant == "lean":
            pair.ask("close", timeout=40)
            time.sleep(1.0)
            cpu2 = pair.cpu()
            again = pair.ask(f"open {n}")
            cpu3 = pair.cpu()
            out["resumed"] = {
                "resumed": again["resumed"], "handshake_ms": again["handshake_ms"],
                "cpu_us_per_connect": {"server": (cpu3[0] - cpu2[0]) * 1e6 / n,
                                       "client": (cpu3[1] - cpu2[1]) * 1e6 / n},
            }
        return out
    finally:
        pair.stop()


def latency_round(n: int, rate: float, cert: str, key: str) -> dict[str, Any]:
    """`lean` at a gentle rate (no handshake waits for another): each handshake's own time,
    full and then resumed (every connection closed and opened again)."""
    pair = Pair("lean", cert, key, interval=600.0, rate=rate)
    try:
        time.sleep(1.5)
        full = pair.ask(f"open {n}")
        pair.ask("close", timeout=40)
        time.sleep(1.0)
        resumed = pair.ask(f"open {n}")
        return {"full_ms": full["handshake_ms"], "resumed_ms": resumed["handshake_ms"], "resumed": resumed["resumed"]}
    finally:
        pair.stop()


def rtt_round(variant: str, n: int, rate: float, cert: str, key: str, window: float) -> dict[str, Any]:
    pair = Pair(variant, cert, key, interval=1.0, rate=rate)
    try:
        time.sleep(1.5)
        opened = pair.ask(f"open {n}")
        time.sleep(4.0)  # every connection pinging
        p0, cpu0, t0 = pair.ask("pongs"), pair.cpu(), time.monotonic()
        time.sleep(window)
        p1, cpu1, t1 = pair.ask("pongs"), pair.cpu(), time.monotonic()
        pongs = p1["pongs"] - p0["pongs"]
        return {"established": opened["established"], "pongs_per_s": pongs / (t1 - t0),
                "failures": p1["failures"],
                "cpu_us_per_rt": {"server": (cpu1[0] - cpu0[0]) * 1e6 / max(1, pongs),
                                  "client": (cpu1[1] - cpu0[1]) * 1e6 / max(1, pongs)}}
    finally:
        pair.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10000, help="connections per round (at most ~19,000)")
    ap.add_argument("--rate", type=float, default=1000.0, help="connects per second")
    ap.add_argument("--window", type=float, default=10.0, help="seconds of the round-trip window")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of " + ", ".join(VARIANTS))
    ap.add_argument("--latency-n", type=int, default=300, help="connections of the handshake-time round")
    ap.add_argument("--latency-rate", type=float, default=50.0, help="its connects per second")
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    from connscale.host.limits import raise_nofile
    from connscale.net.tlscert import make_auto

    raise_nofile()
    c.stop_on_signals()
    made = make_auto(Path(tempfile.mkdtemp(prefix="connscale-bench-tls-")), "127.0.0.1")
    assert made.cert is not None and made.key is not None
    results: dict[str, Any] = {"n": args.n, "rate": args.rate}
    for variant in args.variants.split(","):
        c.log(f"tls_cost: {variant}: connect round, N={args.n} at {args.rate:g}/s")
        results[variant] = {"connect": connect_round(variant, args.n, args.rate, made.cert, made.key)}
        c.log(f"tls_cost: {variant}: round trips, N={args.n} pings/s")
        results[variant]["rtt"] = rtt_round(variant, args.n, args.rate, made.cert, made.key, args.window)
    if "lean" in args.variants.split(","):
        c.log(f"tls_cost: lean: handshake times, {args.latency_n} at {args.latency_rate:g}/s, then resumed")
        results["latency"] = latency_round(args.latency_n, args.latency_rate, made.cert, made.key)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def report(results: dict[str, Any]) -> None:
    n = results["n"]
    print(f"== tls_cost: N={n}, {results['rate']:g} connects/s, loopback, one server and one client process")
    print(f"   {'variant':<8} {'connect µs srv/cli':>20} {'B/conn srv/cli':>18} {'handshake p50/p99 ms':>22} "
          f"{'µs/RT srv/cli':>16} {'failures':>9}")
    for variant in VARIANTS:
        if variant not in results:
            continue
        con, rtt = results[variant]["connect"], results[variant]["rtt"]
        cu, by, rt = con["cpu_us_per_connect"], con["bytes_per_conn"], rtt["cpu_us_per_rt"]
        hs = con["handshake_ms"]
        print(f"   {variant:<8} {cu['server']:>9.0f}/{cu['client']:<9.0f} {by['server']:>8.0f}/{by['client']:<9.0f} "
              f"{c.fmt(hs['p50'], '.2f'):>10}/{c.fmt(hs['p99'], '.2f'):<11} {rt['server']:>7.1f}/{rt['client']:<8.1f} "
              f"{len(con['failures']) + rtt['failures']:>9}")
        resumed = con.get("resumed")
        if resumed:
            ru = resumed["cpu_us_per_connect"]
            rh = resumed["handshake_ms"]
            print(f"   {'  resumed':<8} {ru['server']:>9.0f}/{ru['client']:<9.0f} {'':>18} "
                  f"{c.fmt(rh['p50'], '.2f'):>10}/{c.fmt(rh['p99'], '.2f'):<11} ({resumed['resumed']} of {n} resumed)")
    lat = results.get("latency")
    if lat:
        f, r = lat["full_ms"], lat["resumed_ms"]
        print(f"   handshake time at a gentle rate (lean, TCP connected to TLS ready): full p50 "
              f"{c.fmt(f['p50'], '.2f')} p99 {c.fmt(f['p99'], '.2f')} ms; resumed ({lat['resumed']}) p50 "
              f"{c.fmt(r['p50'], '.2f')} p99 {c.fmt(r['p99'], '.2f')} ms")


if __name__ == "__main__":
    main()
