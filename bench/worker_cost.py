#!/usr/bin/env python3
"""What one idle worker process costs: its RSS at start and its CPU per second.

Starts one real worker (`python -m connscale.procs.worker ROLE SPEC`, PB on its
pipes, as the hub and the agents start them), asks it `snapshot_packed` once a
second as its supervisor does, and after --warm seconds reads, over --window
seconds:
  RSS        VmRSS / RssAnon / RssFile of the worker (/proc/PID/status), KiB
  CPU        ms of CPU per second (/proc/PID/schedstat, ns resolution)
  wake-ups   times the worker was scheduled per second (schedstat's 3rd field)
No connections: this is the fixed cost every one of ~100 workers pays at a
million (bench/README.md, "Lean workers"). Loopback only; the worker is
stopped by its own `exit` call, or its stdin closing, within the time limit.

    python3 bench/worker_cost.py                 # server and client, 3 runs each
    python3 bench/worker_cost.py --role server --runs 5 --window 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as c  # noqa: E402

CHILD = r"""
import json, os, sys, time
from twisted.internet import defer, reactor, task
from connscale.procs.childproc import PBChild, spawn_python

role, spec, warm, window = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
child = PBChild("probe", lambda c, r: None)
spawn_python(reactor, "connscale.procs.worker", [role, spec], child)
res = {}

def schedstat(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        run_ns, _wait_ns, slices = f.read().split()[:3]
    return int(run_ns) / 1e9, int(slices)

def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out

@defer.inlineCallbacks
def measure(info):
    pid = info["pid"]
    poll = task.LoopingCall(lambda: child.call("snapshot_packed").addErrback(lambda f: None))
    poll.start(1.0)
    yield task.deferLater(reactor, warm, lambda: None)
    res.update(status(pid))
    (c0, w0), t0 = schedstat(pid), time.monotonic()
    yield task.deferLater(reactor, window, lambda: None)
    (c1, w1), t1 = schedstat(pid), time.monotonic()
    res["cpu_ms_per_s"] = round((c1 - c0) / (t1 - t0) * 1000, 3)
    res["wakeups_per_s"] = round((w1 - w0) / (t1 - t0), 1)
    poll.stop()
    yield child.call("exit").addErrback(lambda f: None)

child.ready.addCallback(measure).addErrback(lambda f: res.update(error=f.getErrorMessage()))
child.ready.addBoth(lambda _: reactor.callLater(0.3, reactor.stop))
reactor.callLater(warm + window + 30, reactor.stop)
reactor.run()
print(json.dumps(res))
"""


def one(role: str, warm: float, window: float) -> dict:
    spec = {"name": "cost-probe"} if role == "client" else {"ports": [c.free_port()], "name": "cost-probe"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", CHILD, role, json.dumps(spec), str(warm), str(window)],
                         env=env, capture_output=True, text=True, timeout=warm + window + 60, check=False)
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {"error": out.stderr[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=("server", "client", "both"), default="both")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warm", type=float, default=3.0, help="seconds before reading (default 3)")
    ap.add_argument("--window", type=float, default=15.0, help="CPU window, seconds (default 15)")
    args = ap.parse_args()
    roles = ("server", "client") if args.role == "both" else (args.role,)
    print(f"{'role':8s}{'VmRSS KiB':>11s}{'RssAnon':>9s}{'RssFile':>9s}{'CPU ms/s':>10s}{'wake-ups/s':>12s}")
    for role in roles:
        for _ in range(args.runs):
            r = one(role, args.warm, args.window)
            if "error" in r:
                print(f"{role:8s} error: {r['error']}")
                continue
            print(f"{role:8s}{r['VmRSS']:>11,}{r['RssAnon']:>9,}{r['RssFile']:>9,}"
                  f"{r['cpu_ms_per_s']:>10.2f}{r['wakeups_per_s']:>12.1f}")


if __name__ == "__main__":
    main()
