"""What one connection costs on this host: memory and CPU per side, measured with bench/.

The budget (diagnose/budget.py) plans with these figures; `connscale check --measured RUN_DIR`
replaces the memory ones with a run's own (`ConnectionCosts`, from diagnose.memory's table).
"""

from __future__ import annotations

import attrs

#: Kernel memory per connection pair (both ends on this host): slab. Measured on this
#: 2-core box with `bench/pair_cost.py -n 19000` (8.1-8.6 KB), 10.1-10.3 KB in the C
#: reference's notes once something lists /proc/PID/fd (a dentry and inode per fd): the
#: larger figure, since psutil and ps do list it.
KERNEL_BYTES_PER_PAIR = 10_300
#: User memory per connection, per side, once it has pinged (`bench/mem_per_conn.py -n 10000
#: --after-ping`, 2026-11-30: 563 B client, 314 B server).
USER_BYTES = {"client": 563, "server": 314}
#: One worker process before its first connection: 28 MB RSS, 20 MB of it anonymous (2026-11-30).
WORKER_BYTES = 24 * 2**20
#: CPU per ping round trip, per side (`bench/cpu_per_rtt.py -n 10000`, 10k pings/s, 2026-11-30).
US_PER_ROUNDTRIP = {"client": 12.4, "server": 11.3}
#: CPU per connect, per side (19,000 connects at 5,000/s: 0.55 s client, 0.25 s server).
US_PER_CONNECT = {"client": 40.0, "server": 18.0}
#: What TLS adds to a connection, per side, over the plain figures above (`bench/tls_cost.py
#: -n 10000`, connscale's transports and net/tls, ECDSA P-256, 2026-12-07; docs/design.md):
#: OpenSSL's state for it (the client's after it read a session ticket: the larger of the
#: bench's 34.2 KB and a 50,000-connection run's 23.8 KB), its handshake, and the record
#: layer around each ping and pong.
TLS_USER_BYTES = {"client": 34_200, "server": 16_800}
TLS_US_PER_CONNECT = {"client": 448.0, "server": 259.0}
TLS_US_PER_ROUNDTRIP = {"client": 6.1, "server": 5.2}
#: CPU a held connection costs besides its pings, per side, in us per second: its
#: worker's timer wheel, garbage collection over its objects, the worker's report
#: (`bench/pair_cost.py -n 19000`: 19,000 connections at interval 60 s, where the
#: controller fills workers to; 2026-11-30, after the perf work: 0.25 and 0.06).
US_IDLE_PER_CONN = {"client": 0.25, "server": 0.06}

#: Where the default per-connection figures come from.
BENCH_SOURCE = "bench/pair_cost.py and bench/mem_per_conn.py"


@attrs.frozen
class ConnectionCosts:
    """Memory one held connection costs: the figures measured on this box (bench/), or a run's
    own (`connscale check --measured RUN_DIR`: diagnose.memory's table)."""

    kernel_pair: float = KERNEL_BYTES_PER_PAIR
    user_client: float = USER_BYTES["client"]
    user_server: float = USER_BYTES["server"]
    source: str = BENCH_SOURCE

    def user(self, side: str) -> float:
        return self.user_client if side == "client" else self.user_server

    @property
    def measured(self) -> bool:
        """A run's own figures (`connscale check --measured`), not this box's bench ones."""
        return self.source != BENCH_SOURCE
