#!/usr/bin/env python3
"""Past one box, by simulation: how large a fleet of agents one hub steers.

Starts a real hub (`connscale server`, one idle server worker: the control
plane is measured, not sockets) and connects simulated agents to it over real
PB on loopback, 100, then 200, 500, 1000 (`--steps`). Each simulated agent is
its own PB connection with its own TLS and SPAKE2 login (control/link.HubLink,
the agent's own link, holding the agent key only), registers with an
AgentInfo like a real agent holding 50 workers x 19,900 connections, answers
the hub's `report_packed` once a second with a report of that shape (50
worker rows as a real agent sends them, counters that grow, an RTT histogram
of one second of 16,600 pings), takes the orders the hub sends when it adopts
its target, and keeps its link alive every 2 s. The agents live in helper
processes of their own (`--per-helper` agents each, one reactor each).

For each fleet size, once every agent has registered and a few seconds have
passed, it measures over a window (`--window`):
  - the hub's CPU per second (utime+stime of the hub process, /proc/PID/stat);
  - the poll round time: how long each line waited for the agents' answers,
    from its first question to its last answer, or the hub's `answer_wait`
    (0.7 s) when an answer was late (`poll_ms` of each timeline line, written
    by control/collect.py), and how many lines counted an agent stale;
  - the timeline's bytes per second and per hour (growth of timeline.jsonl);
  - lines written per second and the longest gap between two lines: one line
    per second is kept when no gap exceeds 1.5 s and none is missing;
  - agents lost or dropped during the window.
It stops stepping up after a step that did not keep one line per second (the
largest fleet is the last step that did), and with `--profile` records
py-spy on the hub during the first step that fell behind (or at the largest).

Bounded: each step ends after its window (or `--register-timeout` while
agents log in); the whole run after `--budget` seconds. Every process it
starts is stopped by its pid at the end, also on SIGTERM/SIGINT/SIGHUP. Loopback
only. Run by hand, not in CI:

    python bench/fleet.py            # 100, 200, 500, 1000
    python bench/fleet.py --steps 100,500 --window 30 --profile

The last line is one JSON object with every step's figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import _common as c

from connscale.metrics.records import Stats

#: The agent a simulated agent stands for: 50 workers at their fd budget.
WORKERS = 50
BUDGET = 19_900
#: Its pings per second (50 x 19,900 connections pinging every 60 s).
PINGS_PER_S = WORKERS * BUDGET // 60
#: One line per second is kept when no gap between two lines exceeds this.
MAX_GAP_S = 1.5


# ---------------------------------------------------------------- the simulated agents (helper processes)


def realistic_report(index: int, pid0: int, rng: random.Random) -> tuple[dict[str, Any], str]:
    """(totals, the rest of the report as packed JSON after the totals): the shape of
    a real agent's `report_packed` answer with WORKERS workers holding BUDGET each."""
    from connscale.records.packed import pack
    from connscale.control.records import AgentReport
    from connscale.metrics.snapshot import Snapshot
    from connscale.procs.records import WorkerRow

    rows = []
    for i in range(WORKERS):
        # The fields a real agent's rows carry (a 500k run's timeline, clients.local.workers).
        rows.append(WorkerRow(
            index=i, pid=pid0 + i, alive=True, target=BUDGET, open=BUDGET, budget=BUDGET, restarts=0,
            resources={"cpu_system_s": round(rng.uniform(0.5, 30), 2), "cpu_user_s": round(rng.uniform(0.5, 40), 2),
                       "rss_bytes": float(rng.randrange(30_000_000, 45_000_000, 4096)), "threads": 1.0},
            load={"cpu": round(rng.uniform(0.005, 0.05), 3), "lag_ms_max": round(rng.uniform(0.5, 9), 1),
                  "lag_ms_mean": round(rng.uniform(0.2, 2), 1), "nofile": 20000},
            silent_s=0.0,
        ))
    report = AgentReport(totals=Snapshot(), rtt="", workers=tuple(rows), connecting=0, events=()).to_wire()
    held = WORKERS * BUDGET
    totals = {"open": held, "opened": held, "closed": 0, "pings": 0, "pongs": 0, "skipped": 0,
              "failures": {}, "protocol": {}, "failure_total": 0}
    rest = {k: v for k, v in report.items() if k not in ("totals", "rtt")}
    return totals, pack(rest)[1:]  # without its "{": it follows the totals and the rtt


def rtt_windows(n: int, rng: random.Random) -> list[str]:
    """Encoded histograms of one second of an agent's RTTs (lognormal, p50 ~1.3 ms, p99 ~5 ms)."""
    from connscale.metrics.histograms import encode_histogram, new_histogram

    out = []
    for _ in range(n):
        h = new_histogram()
        for _ in range(PINGS_PER_S):
            h.record_value(max(1, int(rng.lognormvariate(7.2, 0.6))))
        out.append(encode_histogram(h))
    return out


def run_helper(args: argparse.Namespace) -> None:
    """One helper process: `args.agents` simulated agents, each its own PB connection and login."""
    from twisted.internet import defer, reactor, task
    from twisted.spread import pb

    from connscale.records.packed import unpack
    from connscale.control.auth import Credentials
    from connscale.control.link import HubLink
    from connscale.control.records import AgentInfo, RegisterAnswer

    rng = random.Random(args.first)
    credentials = Credentials.from_secret(os.environ["FLEET_AGENT_KEY"].encode())
    credentials.check_role("agent:sim-0")  # an agent key, not the secret
    rtts = rtt_windows(6, rng)
    sources = tuple(f"127.0.{1 + k // 250}.{1 + k % 250}" for k in range(16))
    counts = {"registered": 0, "reports": 0, "lost": 0, "orders": 0}

    class SimAgent(pb.Referenceable):
        def __init__(self, n: int) -> None:
            self.name = f"sim-{n:04d}"
            self.pid = 100_000 + n
            self.totals, self.rest = realistic_report(n, 200_000 + n * WORKERS, rng)
            self.session = ""
            self.targets = (BUDGET,) * WORKERS
            self.turn = n

        # -- what the hub calls (AgentMind's verbs) --
        def remote_report_packed(self) -> Any:
            if self.name == "sim-0000" and args.slow_agent:
                # One agent whose host is busy: it answers, late.
                return task.deferLater(reactor, args.slow_agent, self.answer)
            return self.answer()

        def answer(self) -> str:
            counts["reports"] += 1
            t = self.totals
            t["pings"] += PINGS_PER_S
            t["pongs"] += PINGS_PER_S
            self.turn += 1
            return ('{"totals":' + json.dumps(t, separators=(",", ":"))
                    + ',"rtt":"' + rtts[self.turn % len(rtts)] + '",' + self.rest)

        def remote_ensure_workers(self, count: int, target: Any = None) -> list[int]:
            return [BUDGET] * int(count)

        def remote_apply_packed(self, text: Any) -> None:
            counts["orders"] += 1
            # One JSON string, or a list of pieces of one (records.packed decides).
            self.targets = tuple(int(o["target"]) for o in unpack(text))

        def remote_set_rate(self, rate: float) -> None:
            return None

        def remote_shutdown(self) -> None:
            return None  # stopped by its helper's pid, at the end

        # -- the link --
        def info(self) -> AgentInfo:
            return AgentInfo(
                host=f"sim-host-{self.turn % 1000:03d}", pid=self.pid, cores=8, budget=BUDGET,
                memory=16 * 2**30, source_ips=sources, master_host="127.0.0.1", ephemeral=28_232,
                configured_workers="auto", workers=WORKERS, worker_targets=self.targets, session=self.session,
                rate=15_000.0, interval=60.0, timeout=10.0,
            )

        @defer.inlineCallbacks
        def register(self, perspective: Any):  # type: ignore[no-untyped-def]
            answer = RegisterAnswer.from_wire((yield perspective.callRemote("register", self.info().to_wire())))
            self.session = answer.session
            counts["registered"] += 1

        def lost(self, why: str) -> None:
            counts["lost"] += 1

        def refused(self, why: str) -> None:
            print(f"{self.name}: refused: {why}", flush=True)

    links = []

    def start(n: int) -> None:
        agent = SimAgent(n)
        link = HubLink(reactor, ("127.0.0.1", args.port), f"agent:{agent.name}", credentials, mind=agent,
                       on_login=agent.register, on_lost=agent.lost, on_refused=agent.refused)
        link.startService()
        links.append(link)

    # Logins spread over a second or two, as agents starting on their own hosts would.
    for k in range(args.agents):
        reactor.callLater(k * 0.01, start, args.first + k)

    def say() -> None:
        print(f"helper {args.first}: registered={counts['registered']} reports={counts['reports']} "
              f"lost={counts['lost']} orders={counts['orders']}", flush=True)

    from twisted.internet.task import LoopingCall

    LoopingCall(say).start(5.0, now=False)
    # Bounded: a helper whose parent vanished exits on its own.
    reactor.callLater(args.lifetime, reactor.stop)
    signal.signal(signal.SIGTERM, lambda *_: reactor.callFromThread(reactor.stop))
    reactor.run(installSignalHandlers=False)


# ---------------------------------------------------------------- the bench (parent process)


def cpu_ticks(pid: int) -> int | None:
    f = c.stat_fields(pid)
    return int(f[11]) + int(f[12]) if f else None


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = tempfile.mkdtemp(prefix="connscale-fleet-")
        self.deadline = time.monotonic() + args.budget
        self.secret = secrets.token_urlsafe(24)
        self.hub: c.Proc | None = None
        self.helpers: list[c.Proc] = []
        self.agents = 0
        self.timeline = os.path.join(self.dir, "hub", "timeline.jsonl")
        # The hub's salt goes to its own config directory, not the user's.
        self.env = {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    "CONNSCALE_SECRET": self.secret, "XDG_CONFIG_HOME": os.path.join(self.dir, "xdg")}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def alive(self) -> None:
        for p in [self.hub, *self.helpers]:
            if p is not None and not p.alive():
                raise RuntimeError(f"{p.name} exited (rc {p.p.returncode}):\n{p.last_lines()}")

    # -- processes ---------------------------------------------------------------
    def start_hub(self) -> None:
        port = c.free_port()
        serve = c.free_port()
        self.control_port = port
        cfg = {
            "server": {"interface": "127.0.0.1", "ports": [serve], "workers": 1, "status_interval": 60},
            "control": {"listen": f"tcp:{port}:interface=127.0.0.1", "console": "none"},
            "client": {"per_route_max": 28_000},
            "scenario": {"target": 1000},
        }
        path = os.path.join(self.dir, "hub.yaml")
        with open(path, "w") as f:
            json.dump(cfg, f)  # JSON is YAML
        self.hub = c.Proc("hub", [sys.executable, "-m", "connscale", "server", "--config", path,
                                  "--record-dir", os.path.join(self.dir, "hub")], self.dir, self.env)
        c.wait_until(lambda: "server workers listening" in self.hub.tail.text(), 60, "the hub", [self.hub])
        # The agents hold the agent key only, as an ssh-launched agent does (made for the hub's salt).
        from connscale.control.auth import Credentials

        with open(os.path.join(self.dir, "xdg", "connscale", "control-salt")) as f:
            salt = bytes.fromhex(f.read().strip())
        self.env_agents = dict(self.env, FLEET_AGENT_KEY=Credentials.from_secret(self.secret.encode())
                               .agent_line(salt).decode())
        del self.env_agents["CONNSCALE_SECRET"]

    def grow(self, n: int) -> None:
        while self.agents < n:
            k = min(self.args.per_helper, n - self.agents)
            argv = [sys.executable, os.path.abspath(__file__), "--helper", "--port", str(self.control_port),
                    "--first", str(self.agents), "--agents", str(k), "--lifetime", str(int(self.left()) + 60),
                    "--slow-agent", str(self.args.slow_agent)]
            self.helpers.append(c.Proc(f"helper-{self.agents:04d}", argv, self.dir, self.env_agents))
            self.agents += k

    def registered(self) -> int:
        assert self.hub is not None
        return len({line.split(" registered from ")[0].rsplit(" ", 1)[-1]
                    for _, line in self.hub.tail.matching(r"agent sim-\d+ registered from ")})

    def stop(self) -> None:
        for p in reversed(self.helpers):
            p.stop(10)
        if self.hub is not None:
            self.hub.stop(30)

    # -- one step ----------------------------------------------------------------------
    def step(self, n: int) -> dict[str, Any]:
        assert self.hub is not None
        c.log(f"fleet of {n} agents: starting helpers")
        t0 = time.monotonic()
        self.grow(n)
        limit = min(self.args.register_timeout, max(5.0, self.left() - self.args.window))
        end = time.monotonic() + limit
        while self.registered() < n and time.monotonic() < end:
            self.alive()
            time.sleep(0.5)
        got = self.registered()
        out: dict[str, Any] = {"agents": n, "registered": got, "register_s": round(time.monotonic() - t0, 1)}
        if got < n:
            c.log(f"only {got} of {n} agents registered within {limit:.0f} s")
        time.sleep(min(self.args.settle, max(0.0, self.left() - self.args.window)))
        window = max(5.0, min(self.args.window, self.left() - 5))
        size0, tick0, w0 = os.path.getsize(self.timeline), cpu_ticks(self.hub.pid), time.monotonic()
        helper0 = sum(cpu_ticks(p.pid) or 0 for p in self.helpers)
        machine0 = c.machine_cpu()
        t_wall0 = time.time()
        profile = None
        if self.args.profile and self.args.profile_at == n:
            profile = self.profile(min(20.0, window - 2))
        while time.monotonic() - w0 < window:
            self.alive()
            time.sleep(0.2)
        w1, tick1, size1 = time.monotonic(), cpu_ticks(self.hub.pid), os.path.getsize(self.timeline)
        helper1 = sum(cpu_ticks(p.pid) or 0 for p in self.helpers)
        machine1 = c.machine_cpu()
        t_wall1 = time.time()
        span = w1 - w0
        busy = sum(machine1[k] - machine0[k] for k in machine1 if k not in ("idle", "iowait")) / c.HZ
        records = self.lines(size0, size1)
        inside = [r for r in records if r.t is not None and t_wall0 <= r.t <= t_wall1]
        ts = [r.t for r in inside if r.t is not None]
        gaps = [b - a for a, b in itertools.pairwise(ts)]
        polls = sorted(r.poll_ms for r in records if r.poll_ms is not None)
        # Agents counted with an old report because their answer was late (control/collect.py).
        stale = [len(r.stale) for r in inside]
        last = records[-1] if records else None
        clients = last.clients if last is not None else {}
        connected = sum(1 for v in clients.values() if v.connected)
        out.update({
            "window_s": round(span, 1),
            "hub_cpu_ms_per_s": round(1000 * (tick1 - tick0) / c.HZ / span, 1) if tick0 and tick1 else None,
            "helpers_cpu_ms_per_s": round(1000 * (helper1 - helper0) / c.HZ / span, 1),
            "machine_busy_cores": round(busy / span, 2),
            "lines": len(ts),
            "lines_per_s": round(len(ts) / span, 2),
            "max_gap_s": round(max(gaps), 2) if gaps else None,
            "poll_ms_p50": polls[len(polls) // 2] if polls else None,
            "poll_ms_max": polls[-1] if polls else None,
            "lines_with_stale": sum(1 for k in stale if k),
            "stale_agents_max": max(stale, default=0),
            "line_bytes": round((size1 - size0) / max(1, len(records))),
            "timeline_bytes_per_s": round((size1 - size0) / span),
            "timeline_gb_per_hour": round((size1 - size0) / span * 3600 / 1e9, 2),
            "connected_at_end": connected,
            "agent_losses": sum(v.disconnects for v in clients.values()),
            "open_reported": last.client.open if last is not None else None,
            "hub_rss_mb": round(c.rss_bytes(self.hub.pid) / 2**20, 1),
        })
        out["keeps_one_line_per_s"] = bool(
            ts and len(ts) >= int(span) - 1 and (max(gaps) if gaps else 0) <= MAX_GAP_S and connected == n
        )
        if profile is not None:
            out["profile"] = profile
        return out

    def lines(self, start: int, end: int) -> list[Stats]:
        """The timeline's records written between two sizes (whole lines only)."""
        from connscale.records.base import RecordError

        out = []
        with open(self.timeline, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
        for raw in data.split(b"\n"):
            try:
                out.append(Stats.from_json(raw.decode("utf-8", "replace")))
            except RecordError:
                continue  # the torn line at either edge
        return out

    def profile(self, seconds: float) -> dict[str, Any]:
        """py-spy on the hub for `seconds`, summarised by bench/pyspy_top.py."""
        assert self.hub is not None
        raw = os.path.join(self.dir, "hub-pyspy.txt")
        top = os.path.join(self.dir, "hub-pyspy-top.txt")
        c.log(f"py-spy on the hub (pid {self.hub.pid}) for {seconds:.0f} s")
        try:
            subprocess.run(["py-spy", "record", "-p", str(self.hub.pid), "-d", str(int(seconds)), "-r", "100", "--nonblocking",
                            "--format", "raw", "-o", raw], check=True, timeout=seconds + 30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(top, "w") as f:
                subprocess.run([sys.executable, os.path.join(HERE, "pyspy_top.py"), raw, "-k", "30"], stdout=f,
                               check=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            return {"error": str(e)}
        return {"raw": raw, "top": top}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="100,200,500,1000", help="fleet sizes, in order (default 100,200,500,1000)")
    ap.add_argument("--window", type=float, default=40.0, help="seconds measured per step (default 40)")
    ap.add_argument("--settle", type=float, default=8.0, help="seconds after the last registration (default 8)")
    ap.add_argument("--register-timeout", type=float, default=90.0, help="seconds for a step's agents to log in")
    ap.add_argument("--per-helper", type=int, default=125, help="simulated agents per helper process")
    ap.add_argument("--budget", type=float, default=900.0, help="seconds the whole run may take (default 900)")
    ap.add_argument("--profile", action="store_true", help="py-spy the hub during one step (--profile-at)")
    ap.add_argument("--profile-at", type=int, default=500, help="the fleet size to profile (default 500)")
    ap.add_argument("--slow-agent", type=float, default=0.0, metavar="S",
                    help="agent sim-0000 answers its reports S seconds late (one busy agent host)")
    ap.add_argument("--keep-going", action="store_true", help="run every step even after one fell behind")
    # helper mode (internal)
    ap.add_argument("--helper", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--agents", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--lifetime", type=float, default=1200, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.helper:
        try:
            args.step_list = [int(s) for s in args.steps.split(",") if s.strip()]
        except ValueError:
            ap.error(f"--steps {args.steps!r}: give fleet sizes like 100,200,500")
        if not args.step_list or min(args.step_list) < 1 or max(args.step_list) > 4000:
            ap.error("--steps: fleet sizes between 1 and 4000")
        if not 1 <= args.per_helper <= 1000:
            ap.error("--per-helper: between 1 and 1000")
        if not 0 <= args.slow_agent <= 30:
            ap.error("--slow-agent: seconds between 0 and 30")
    return args


def table(results: list[dict[str, Any]]) -> str:
    head = ["agents", "hub CPU ms/s", "poll p50 ms", "poll max ms", "lines/s", "max gap s", "line KB",
            "timeline GB/h", "one line/s", "helpers CPU ms/s", "box busy cores"]
    rows = [[str(r["agents"]), str(r.get("hub_cpu_ms_per_s")), str(r.get("poll_ms_p50")), str(r.get("poll_ms_max")),
             str(r.get("lines_per_s")), str(r.get("max_gap_s")), f"{r.get('line_bytes', 0) / 1000:.0f}",
             str(r.get("timeline_gb_per_hour")), "yes" if r.get("keeps_one_line_per_s") else "NO",
             str(r.get("helpers_cpu_ms_per_s")), str(r.get("machine_busy_cores"))] for r in results]
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head), *rows])


def main() -> None:
    args = parse_args()
    if args.helper:
        run_helper(args)
        return
    c.stop_on_signals()  # SIGTERM, SIGHUP

    def interrupted(signum: int, frame: Any) -> None:
        raise c.Terminated("SIGINT")

    signal.signal(signal.SIGINT, interrupted)
    fleet = Fleet(args)
    c.log(f"fleet bench in {fleet.dir}")
    results: list[dict[str, Any]] = []
    largest = 0
    try:
        fleet.start_hub()
        for n in args.step_list:
            if fleet.left() < 30:
                c.log(f"time budget spent: stopping before {n} agents")
                break
            r = fleet.step(n)
            results.append(r)
            c.log(json.dumps(r))
            if r["keeps_one_line_per_s"]:
                largest = max(largest, n)
            elif not args.keep_going:
                break
    except c.Terminated as e:
        c.log(f"interrupted ({e}); stopping what we started")
    finally:
        fleet.stop()
    print(table(results))
    kept = f"{largest} agents (each reporting {WORKERS} workers)" if largest else "none of the steps run"
    print(f"largest fleet with one timeline line per second: {kept}; run files in {fleet.dir}")
    print(json.dumps({"largest": largest, "steps": results}))


if __name__ == "__main__":
    main()
