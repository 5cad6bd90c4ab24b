"""One synthetic timeline line (a `Stats`) of a given shape, for the incident detector and the
walls: shared by the incidents and run-parts tests."""

from __future__ import annotations

from connscale.metrics.records import Stats


def worker(index=0, open=1000, cpu=0.1, lag_mean=1.0, lag_max=3.0, nofile=20_000, silent=0.5, alive=True,
           budget=19_900, target=1000):
    return {"index": index, "pid": 1000 + index, "alive": alive, "target": target, "open": open, "budget": budget,
            "restarts": 0, "resources": {}, "silent_s": silent,
            "load": {"cpu": cpu, "lag_ms_max": lag_max, "lag_ms_mean": lag_mean, "nofile": nofile}}


def record(t, open, target=None, opened=None, failures=None, server_failures=None, server_open=None, kernel=None,
           clients=None, servers=None, rate=1000.0, connecting=0):
    target = open if target is None else target
    return Stats.from_wire({
        "elapsed_s": float(t),
        "client": {"open": open, "opened": open if opened is None else opened, "failures": failures or {}},
        "server": {"open": open if server_open is None else server_open, "failures": server_failures or {}},
        "clients": {"a1": {"connected": True, "target": target, "open": open, "connecting": connecting,
                           "rate": rate, "workers": clients if clients is not None else [worker(open=open)]}},
        "server_workers": servers if servers is not None else [worker(0, open // 2), worker(1, open - open // 2)],
        "ghosts": max(0, open - (open if server_open is None else server_open)),
        "kernel": kernel or {"listen_overflows": 0, "listen_drops": 0, "syn_retrans": 0},
        "rtt_window_ms": {"p50": 1.0, "p99": 5.0},
    })
