#!/usr/bin/env python3
"""Soak: `connscale run` held for a long time, watched for leaks, gaps and failures.

Run by hand (not in CI); it takes the machine for --minutes plus a ramp:

    python3 bench/soak.py              # 100,000 connections, 30 minutes
    nice -n 10 python3 bench/soak.py --target 5000 --minutes 2 --warmup 30   # a quick check

What it does, on loopback only:

* writes a config (server ports: a free run of --ports consecutive ports in
  20000-31999, below the ephemeral range; a free control port; source IPs
  127.0.0.2-...; `client.interval` --interval, so target/interval pings/s) and
  starts `python -m connscale run -c CONFIG --run-dir DIR` as its own child;
* bounds it: the run's own `scenario.time_limit` covers the ramp and the hold
  with two minutes to spare, and this script's hard deadline is --grace seconds
  past that. At the deadline, on a memory guard (MemAvailable under
  --min-available GiB) or on our own SIGINT/SIGTERM/SIGHUP it stops the run by
  the pid it started: SIGINT (the run writes its summary and stops its
  children), then SIGTERM, then SIGKILL for that pid and whatever is left of
  its descendants. Nothing is looked up by name;
* every --sample-every seconds reads the RSS of every process of the run: the
  run itself, its hub and agent, and every server and client worker, found as
  descendants of the run's pid through /proc/*/stat parent links;
* at the end reports, from those samples and the run directory
  (timeline.jsonl, summary.json):
    - RSS drift of each process between the start of the hold plus --warmup
      and the end of the hold (median of the first and of the last three
      samples of that window), its slope in MiB/h, the largest drift; PASS
      when every process drifts less than --max-drift % (default 5) and none
      was replaced during the window;
    - failures by cause (client and server side, during the hold and over the
      whole run); PASS when every failure has a cause: none counted as
      `unknown`, `other` or a bare `ERRNO_<n>` (connscale.metrics.counters);
    - timeline completeness over the hold: lines written, seconds spanned,
      the largest gap between two lines; PASS when no gap exceeds 2 s;
    - RTT p50/p99 over the hold (the summary's rtt_final_hold_ms, and the same
      recomputed from the timeline's per-second histograms after the warm-up);
    - whether the target was held through the whole hold.
  The last line of stdout is one JSON object with all of it. Everything
  (config, the run's output, samples.jsonl, soak.json, the run directory)
  stays in --out (default /tmp/connscale-soak-<time>).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import _common as c

from connscale.records.base import RecordError
from connscale.diagnose.records import read_summary
from connscale.metrics.histograms import rtt_summary_ms
from connscale.metrics.phases import FINAL_HOLD, merged_histogram
from connscale.metrics.records import Stats
from connscale.host.inventory import read_meminfo
from connscale.metrics.timeline import TIMELINE_FILE, read_timeline

MiB = 1024 * 1024
#: Causes that name nothing (connscale.metrics.counters.APP_CAUSES has "unknown";
#: errno_cause() falls back to "ERRNO_<n>" for a number errno does not know).
CAUSELESS = frozenset({"unknown", "other", ""})
#: Seconds the run needs besides the ramp and the hold: hub, agent and workers starting.
SETUP_S = 60.0
MAX_GAP_S = 2.0


# -- set-up ------------------------------------------------------------------------


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    s = socket.socket()
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_run(n: int, lo: int = 20000, hi: int = 31999) -> int:
    """The first of `n` consecutive free ports in [lo, hi] (below the ephemeral range)."""
    for _ in range(500):
        first = random.randint(lo, hi - n + 1)
        if all(port_free(p) for p in range(first, first + n)):
            return first
    raise SystemExit(f"soak: no {n} consecutive free ports in {lo}-{hi}")


def build_config(args: argparse.Namespace, out: str) -> tuple[str, dict[str, Any]]:
    import yaml

    first = free_run(args.ports, 20000, 31999)
    control = c.free_port("127.0.0.1", 20000, 31999)
    while first <= control < first + args.ports:
        control = c.free_port("127.0.0.1", 20000, 31999)
    # Tuples (source IP, server port) hold at most ~7,000 each (half of per_route_max):
    # connect() stays cheap and no tuple runs out of ephemeral ports.
    ips = max(2, min(250, -(-args.target // (7000 * args.ports))))
    ramp_s = args.target / args.rate
    final_hold = args.minutes * 60.0
    time_limit = int(SETUP_S + 3 * ramp_s + args.steps * args.step_hold + final_hold + 120)
    cfg = {
        "server": {"interface": "127.0.0.1", "ports": f"{first}-{first + args.ports - 1}",
                   "backlog": 4096, "workers": "auto", "status_interval": 30},
        "client": {"interval": args.interval, "timeout": args.timeout,
                   "source_ips": f"127.0.0.2-127.0.0.{1 + ips}", "per_route_max": 14000,
                   "workers": "auto", "close": "rst", "status_interval": 30},
        "control": {"listen": f"tcp:{control}:interface=127.0.0.1", "console": "none"},
        "scenario": {"target": args.target, "rate": args.rate, "steps": args.steps, "hold": args.step_hold,
                     "final_hold": final_hold, "max_failures": args.max_failures, "time_limit": time_limit},
        "run": {"dir": os.path.join(out, "runs")},
    }
    path = os.path.join(out, "soak.yaml")
    with open(path, "w") as f:
        f.write("# written by bench/soak.py\n")
        yaml.safe_dump(cfg, f, sort_keys=False)
    return path, cfg


# -- /proc -------------------------------------------------------------------------


def mem_available() -> int:
    return read_meminfo().get("MemAvailable", 0)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


class Roles:
    """Names the processes of a run by their place in its tree: run > hub (connscale
    server) > server workers; run > agent (connscale agent) > client workers."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.known: dict[int, str] = {root: "run"}

    def name(self, pid: int, parent: int) -> str:
        if pid not in self.known:
            up = self.known.get(parent, "")
            if parent == self.root:
                args = cmdline(pid)
                verb = args[3] if len(args) > 3 and args[1:3] == ["-m", "connscale"] else ""
                role = {"server": "hub", "agent": "agent"}.get(verb, f"child:{verb or '?'}")
            elif up == "hub":
                role = "server-worker"
            elif up == "agent":
                role = "client-worker"
            else:
                role = f"{up}>child"
            self.known[pid] = role
        return self.known[pid]


def sample(roles: Roles) -> dict[str, Any]:
    procs: dict[str, dict[str, Any]] = {}
    for pid in c.descendants(roles.root):
        f = c.stat_fields(pid)
        if not f or f[0] == "Z":
            continue
        detail = c.rss_detail(pid)
        if not detail:
            continue
        procs[str(pid)] = {"role": roles.name(pid, int(f[1])), "rss": detail.get("VmRSS", 0),
                           "anon": detail.get("RssAnon", 0)}
    return {"t": round(time.time(), 3), "mem_available": mem_available(), "procs": procs}


# -- the run -----------------------------------------------------------------------


class TimelineTail:
    """New complete lines of a growing timeline.jsonl (the run directory appears late)."""

    def __init__(self, runs: str) -> None:
        self.runs = runs
        self.path: str | None = None
        self.pos = 0
        self.last: Stats | None = None
        self.hold_started: float | None = None

    def poll(self) -> None:
        if self.path is None:
            dirs = sorted(os.listdir(self.runs)) if os.path.isdir(self.runs) else []
            if not dirs:
                return
            self.path = os.path.join(self.runs, dirs[-1], TIMELINE_FILE)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.pos += end + 1
        for line in data[:end].splitlines():
            try:
                record = Stats.from_json(line.decode("utf-8", "replace"))
            except RecordError:
                continue
            self.last = record
            if self.hold_started is None and record.phase == FINAL_HOLD:
                self.hold_started = record.t


def stop_run(proc: subprocess.Popen, why: str) -> None:
    """SIGINT (the run summarises and stops its children), SIGTERM, then SIGKILL: by pid."""
    if proc.poll() is not None:
        return
    c.log(f"soak: stopping the run (pid {proc.pid}): {why}")
    c.stop_process(proc, "soak: the run", ((signal.SIGINT, 90), (signal.SIGTERM, 30)))


def soak(args: argparse.Namespace, out: str) -> dict[str, Any]:
    config, cfg = build_config(args, out)
    runs = cfg["run"]["dir"]
    os.makedirs(runs, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=REPO + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    cmd = [sys.executable, "-m", "connscale", "run", "-c", config, "--run-dir", runs]
    deadline_s = cfg["scenario"]["time_limit"] + args.grace
    c.log(f"soak: {args.target:,} connections, interval {args.interval:g}s ({args.target / args.interval:,.0f} "
          f"pings/s), hold {args.minutes:g} min; ports {cfg['server']['ports']}, control "
          f"{cfg['control']['listen']}; hard deadline {deadline_s:.0f}s; files in {out}")
    log_f = open(os.path.join(out, "run.log"), "w")  # noqa: SIM115 (closed in the finally below)
    nice = args.nice

    def lower_priority() -> None:
        if nice:
            os.nice(nice)

    started = time.time()
    # A session of its own: a Ctrl-C at our terminal reaches us, and we stop the run in order.
    proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            cwd=out, start_new_session=True,
                            preexec_fn=lower_priority)  # noqa: PLW1509 (no threads here)
    c.log(f"soak: started pid {proc.pid}: {' '.join(cmd)}")
    roles = Roles(proc.pid)
    tail = TimelineTail(runs)
    samples: list[dict[str, Any]] = []
    stopped = ""
    next_sample = next_log = time.time()
    with open(os.path.join(out, "samples.jsonl"), "w") as samples_f:
        try:
            while proc.poll() is None:
                now = time.time()
                if now - started > deadline_s:
                    stopped = f"hard deadline ({deadline_s:.0f}s) passed"
                    break
                avail = mem_available()
                if avail < args.min_available * 2**30:
                    stopped = f"memory guard: MemAvailable {avail / 2**30:.2f} GiB < {args.min_available:g} GiB"
                    break
                tail.poll()
                if now >= next_sample:
                    s = sample(roles)
                    samples.append(s)
                    samples_f.write(json.dumps(s) + "\n")
                    samples_f.flush()
                    next_sample += args.sample_every
                if now >= next_log:
                    r = tail.last
                    tree = sum(p["rss"] for p in samples[-1]["procs"].values()) if samples else 0
                    c.log(f"soak: {now - started:5.0f}s phase={r.phase if r else '-'} "
                          f"open={r.client.open if r else '-'} "
                          f"failures={r.client.failure_total if r else '-'}"
                          f"/{r.server.failure_total if r else '-'} "
                          f"procs={len(samples[-1]['procs']) if samples else 0} rss={tree / MiB:,.0f} MiB "
                          f"avail={avail / 2**30:.1f} GiB")
                    next_log += 60
                time.sleep(1.0)
        except (KeyboardInterrupt, c.Terminated) as e:
            stopped = f"soak interrupted ({type(e).__name__} {e})".strip()
        finally:
            if proc.poll() is None:
                stop_run(proc, stopped or "soak ending")
            log_f.close()
    c.log(f"soak: the run ended with status {proc.returncode} after {time.time() - started:.0f}s")
    tail.poll()
    run_dir = os.path.dirname(tail.path) if tail.path else None
    result = analyse(args, run_dir, samples, stopped)
    result.update({
        "command": " ".join(cmd), "config": cfg, "exit_status": proc.returncode, "stopped_by_soak": stopped or None,
        "wall_s": round(time.time() - started, 1), "out": out,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
    })
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    return result


# -- analysis ----------------------------------------------------------------------


def _uncaused(key: str) -> bool:
    cause = key.split(":", 1)[1] if ":" in key else key
    return cause in CAUSELESS or cause.startswith("ERRNO_")


def _failures(record: Stats | None) -> dict[str, dict[str, int]]:
    if record is None:
        return {"client": {}, "server": {}}
    return {"client": dict(record.client.failures), "server": dict(record.server.failures)}


def _minus(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for side, counts in a.items():
        d = {k: n - b.get(side, {}).get(k, 0) for k, n in counts.items()}
        out[side] = {k: n for k, n in d.items() if n}
    return out


def drift_table(samples: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    """Per process: RSS at the window's start and end (median of 3 samples each), drift, slope."""
    series: dict[str, list[tuple[float, int]]] = {}
    roles: dict[str, str] = {}
    window = [s for s in samples if t0 <= s["t"] <= t1]
    for s in window:
        for pid, p in s["procs"].items():
            series.setdefault(pid, []).append((s["t"], p["rss"]))
            roles[pid] = p["role"]
    rows = []
    for pid, pts in series.items():
        whole = len(pts) == len(window) and len(pts) >= 2
        start = statistics.median(v for _, v in pts[:3])
        end = statistics.median(v for _, v in pts[-3:])
        slope = 0.0
        if len(pts) >= 2:
            ts = [t for t, _ in pts]
            mt, mv = statistics.fmean(ts), statistics.fmean(v for _, v in pts)
            var = sum((t - mt) ** 2 for t in ts)
            slope = sum((t - mt) * (v - mv) for t, v in pts) / var if var else 0.0
        # Growth in each half of the window: a process that settles grows in the first
        # half only; a leak grows in both.
        mid = pts[len(pts) // 2][1]
        halves = [round((mid - start) / MiB, 2), round((end - mid) / MiB, 2)]
        rows.append({
            "role": roles[pid], "pid": int(pid), "samples": len(pts), "whole_window": whole,
            "growth_halves_mib": halves,
            "rss_start_mib": round(start / MiB, 1), "rss_end_mib": round(end / MiB, 1),
            "rss_max_mib": round(max(v for _, v in pts) / MiB, 1),
            "drift_pct": round((end - start) / start * 100, 2) if start else None,
            "slope_mib_per_h": round(slope * 3600 / MiB, 2),
        })
    order = {"run": 0, "hub": 1, "agent": 2, "server-worker": 3, "client-worker": 4}
    rows.sort(key=lambda r: (order.get(r["role"], 9), r["pid"]))
    return rows


def analyse(args: argparse.Namespace, run_dir: str | None, samples: list[dict[str, Any]],
            stopped: str = "") -> dict[str, Any]:
    res: dict[str, Any] = {"run_dir": run_dir, "target": args.target, "interval_s": args.interval,
                           "minutes": args.minutes, "samples": len(samples)}
    summary = None
    records: list[Stats] = []
    if run_dir:
        summary, problem = read_summary(run_dir)
        if problem or summary is None:
            res["summary_error"] = problem or "no summary.json"
        if os.path.exists(os.path.join(run_dir, TIMELINE_FILE)):
            records = list(read_timeline(os.path.join(run_dir, TIMELINE_FILE)))
    res["verdict"] = summary.verdict if summary else None
    res["reason"] = summary.reason if summary else None
    res["timeline_lines"] = len(records)
    hold_idx = [i for i, r in enumerate(records) if r.phase == FINAL_HOLD]
    checks: dict[str, bool] = {}
    if not hold_idx:
        res["error"] = "the run never reached its final hold"
        res["checks"] = {"reached_hold": False}
        res["pass"] = False
        return res
    first, last = hold_idx[0], hold_idx[-1]
    hold = records[first:last + 1]
    t0, t1 = hold[0].t or 0.0, hold[-1].t or 0.0
    foreign = sorted({r.phase for r in hold if r.phase != FINAL_HOLD})
    # Timeline completeness over the hold.
    gaps = [(b.t or 0.0) - (a.t or 0.0) for a, b in pairwise(hold)]
    largest = max(gaps, default=0.0)
    at = (hold[gaps.index(largest)].t or 0.0) if gaps else t0
    res["timeline"] = {
        "hold_lines": len(hold), "hold_span_s": round(t1 - t0, 1), "largest_gap_s": round(largest, 2),
        "largest_gap_at_s_into_hold": round(float(at) - t0, 1),
        "gaps_over_2s": sum(1 for g in gaps if g > MAX_GAP_S),
        "missing_seconds": max(0, round(t1 - t0) + 1 - len(hold)), "other_phases_inside": foreign,
    }
    checks["timeline_complete"] = largest <= MAX_GAP_S and not foreign
    # The hold ran its planned length (a run stopped early, by itself or by us, proves less).
    checks["hold_ran_full_length"] = not stopped and t1 - t0 >= args.minutes * 60 - MAX_GAP_S - 1
    # Held: the target open through the hold, both sides.
    opens = [r.client.open for r in hold]
    server_opens = [r.server.open for r in hold]
    span = max(t1 - t0, 1e-9)
    res["held"] = {"client_open_min": min(opens), "client_open_max": max(opens),
                   "server_open_min": min(server_opens), "server_open_max": max(server_opens),
                   "pongs_per_s": round((hold[-1].client.pongs - hold[0].client.pongs) / span, 1),
                   "hold_minutes": round(span / 60, 2)}
    checks["held_target"] = min(opens) >= args.target and min(server_opens) >= args.target
    # Failures: during the hold (last hold line minus the line before the hold) and the whole run.
    before = records[first - 1] if first > 0 else None
    in_hold = _minus(_failures(hold[-1]), _failures(before))
    whole = _failures(records[-1])
    uncaused = sorted({f"{side}:{k}" for part in (in_hold, whole) for side, d in part.items()
                       for k in d if _uncaused(k)})
    res["failures"] = {"hold": in_hold, "whole_run": whole,
                       "hold_total": sum(sum(d.values()) for d in in_hold.values()),
                       "whole_run_total": sum(sum(d.values()) for d in whole.values()),
                       "without_cause": uncaused,
                       "summary_counted": summary.counted_failures if summary else None}
    checks["every_failure_has_a_cause"] = not uncaused
    # RTT over the hold.
    warm_t = t0 + min(args.warmup, (t1 - t0) / 4)
    after_warm = [r for r in hold if (r.t or 0.0) >= warm_t]
    res["rtt_ms"] = {"final_hold(summary)": summary.rtt_final_hold_ms.to_wire() if summary else None,
                     "hold(timeline)": rtt_summary_ms(merged_histogram(hold)).to_wire(),
                     "after_warmup(timeline)": rtt_summary_ms(merged_histogram(after_warm)).to_wire()}
    # RSS drift between the end of the warm-up and the end of the hold.
    rows = drift_table(samples, warm_t, t1 + args.sample_every / 2)
    res["rss"] = {"window_s": [round(warm_t - t0, 1), round(t1 - t0, 1)], "processes": rows}
    drifts = [r["drift_pct"] for r in rows if r["drift_pct"] is not None]
    res["rss"]["max_drift_pct"] = max(drifts, default=None)
    worst = max(rows, key=lambda r: r["drift_pct"] if r["drift_pct"] is not None else -1e9, default=None)
    res["rss"]["max_drift_process"] = f"{worst['role']}[{worst['pid']}]" if worst else None
    res["rss"]["replaced_or_partial"] = [f"{r['role']}[{r['pid']}]" for r in rows if not r["whole_window"]]
    res["rss"]["tree_start_mib"] = round(sum(r["rss_start_mib"] for r in rows), 1)
    res["rss"]["tree_end_mib"] = round(sum(r["rss_end_mib"] for r in rows), 1)
    checks[f"rss_drift_under_{args.max_drift:g}_pct"] = bool(rows) and bool(drifts) and \
        max(drifts) < args.max_drift and not res["rss"]["replaced_or_partial"]
    res["checks"] = checks
    res["pass"] = all(checks.values())
    return res


def reanalyse(args: argparse.Namespace, out: str) -> dict[str, Any]:
    """The report of an earlier soak from its directory: its config gives the target,
    interval and hold; the other options (--warmup, --max-drift...) are this call's."""
    import yaml

    with open(os.path.join(out, "soak.yaml")) as f:
        cfg = yaml.safe_load(f)
    args.target = int(cfg["scenario"]["target"])
    args.interval = float(cfg["client"]["interval"])
    args.minutes = float(cfg["scenario"]["final_hold"]) / 60
    with open(os.path.join(out, "samples.jsonl")) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    if len(samples) > 1:
        args.sample_every = round(samples[1]["t"] - samples[0]["t"])
    before: dict[str, Any] = {}
    if os.path.exists(os.path.join(out, "soak.json")):
        with open(os.path.join(out, "soak.json")) as f:
            before = json.load(f)
    runs = cfg["run"]["dir"]
    dirs = sorted(os.listdir(runs)) if os.path.isdir(runs) else []
    res = analyse(args, os.path.join(runs, dirs[-1]) if dirs else None, samples, before.get("stopped_by_soak") or "")
    for k in ("command", "exit_status", "stopped_by_soak", "wall_s", "date"):
        res[k] = before.get(k)
    res.update({"config": cfg, "out": out})
    return res


# -- output ------------------------------------------------------------------------


def fmt_rtt(r: dict[str, Any] | None) -> str:
    if not r or r.get("p50") is None:
        return "-"
    return f"p50 {r['p50']} ms, p99 {r['p99']} ms, max {r.get('max')} ms"


def print_report(res: dict[str, Any], say: Any = print) -> None:
    say(f"soak: {res['target']:,} connections, interval {res['interval_s']:g}s, hold {res['minutes']:g} min; "
        f"verdict {res.get('verdict')} {('(' + res['reason'] + ')') if res.get('reason') else ''}")
    if "error" in res:
        say(f"soak: {res['error']}")
        return
    rss = res["rss"]
    say(f"RSS per process, {rss['window_s'][0]:g}s to {rss['window_s'][1]:g}s into the hold:")
    say("| process | pid | samples | RSS start MiB | RSS end MiB | drift % | slope MiB/h | growth 1st/2nd half MiB |")
    say("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rss["processes"]:
        h1, h2 = r["growth_halves_mib"]
        say(f"| {r['role']} | {r['pid']} | {r['samples']} | {r['rss_start_mib']} | {r['rss_end_mib']} | "
            f"{r['drift_pct']:+.2f} | {r['slope_mib_per_h']:+.2f} | {h1:+.2f} / {h2:+.2f} |")
    say(f"max drift {rss['max_drift_pct']:+.2f} % ({rss['max_drift_process']}); tree {rss['tree_start_mib']:,.0f}"
        f" -> {rss['tree_end_mib']:,.0f} MiB; replaced/partial: {rss['replaced_or_partial'] or 'none'}")
    t = res["timeline"]
    say(f"timeline: {t['hold_lines']} lines over {t['hold_span_s']}s of hold, largest gap {t['largest_gap_s']}s "
        f"({t['largest_gap_at_s_into_hold']}s in), {t['gaps_over_2s']} gaps > 2s, "
        f"{t['missing_seconds']} seconds missing")
    h = res["held"]
    say(f"held: client open {h['client_open_min']:,}-{h['client_open_max']:,}, server open "
        f"{h['server_open_min']:,}-{h['server_open_max']:,}, {h['pongs_per_s']:,.0f} pongs/s")
    f = res["failures"]
    say(f"failures: hold {f['hold_total']} {f['hold']}, whole run {f['whole_run_total']} {f['whole_run']}; "
        f"without a cause: {f['without_cause'] or 'none'}")
    for k, v in res["rtt_ms"].items():
        say(f"rtt {k}: {fmt_rtt(v)}")
    say("checks: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in res["checks"].items()))


def compact(res: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON: figures, not the whole per-process table."""
    out = {k: res.get(k) for k in ("date", "target", "interval_s", "minutes", "verdict", "reason", "pass", "checks",
                                   "exit_status", "stopped_by_soak", "wall_s", "run_dir")}
    if "rss" in res:
        rows = res["rss"]["processes"]
        out["rss"] = {"max_drift_pct": res["rss"]["max_drift_pct"], "max_drift_process": res["rss"]["max_drift_process"],
                      "processes": len(rows), "window_s": res["rss"]["window_s"],
                      "tree_mib": [res["rss"]["tree_start_mib"], res["rss"]["tree_end_mib"]],
                      "drift_pct": {f"{r['role']}[{r['pid']}]": r["drift_pct"] for r in rows},
                      "replaced_or_partial": res["rss"]["replaced_or_partial"]}
    for k in ("timeline", "held"):
        if k in res:
            out[k] = res[k]
    if "failures" in res:
        out["failures"] = {k: res["failures"][k] for k in ("hold", "hold_total", "whole_run_total", "without_cause")}
    if "rtt_ms" in res:
        final = res["rtt_ms"]["final_hold(summary)"] or res["rtt_ms"]["hold(timeline)"] or {}
        warm = res["rtt_ms"]["after_warmup(timeline)"] or {}
        out["rtt_ms"] = {"final_hold": {k: final.get(k) for k in ("p50", "p99", "max")},
                         "after_warmup": {k: warm.get(k) for k in ("p50", "p99", "max")}}
    if "error" in res:
        out["error"] = res["error"]
    return out


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=int, default=100_000, help="connections to hold (100,000)")
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the final hold, minutes (30)")
    ap.add_argument("--interval", type=float, default=5.0, help="client.interval: seconds between pings (5)")
    ap.add_argument("--timeout", type=float, default=5.0, help="client.timeout: seconds to wait for a pong (5)")
    ap.add_argument("--rate", type=float, default=5000.0, help="connects per second during the ramp (5000)")
    ap.add_argument("--steps", type=int, default=4, help="ramp steps (4)")
    ap.add_argument("--step-hold", type=float, default=3.0, help="seconds held after each ramp step (3)")
    ap.add_argument("--ports", type=int, default=4, help="server ports (4 consecutive free ports in 20000-31999)")
    ap.add_argument("--max-failures", type=int, default=10_000,
                    help="scenario.max_failures: the run stops beyond this many counted failures (10,000); "
                         "a soak wants to see failures and their causes rather than stop at the first")
    ap.add_argument("--warmup", type=float, default=120.0,
                    help="seconds into the hold before RSS drift is measured (120; at most a quarter of the hold)")
    ap.add_argument("--sample-every", type=float, default=15.0, help="seconds between RSS samples (15)")
    ap.add_argument("--max-drift", type=float, default=5.0, help="PASS when every process drifts less (5 %%)")
    ap.add_argument("--min-available", type=float, default=2.0,
                    help="memory guard: stop the run when MemAvailable falls under this many GiB (2)")
    ap.add_argument("--grace", type=float, default=180.0,
                    help="hard deadline: seconds past the run's own time limit (180)")
    ap.add_argument("--nice", type=int, default=0, help="niceness added to the run and its children (0)")
    ap.add_argument("--out", help="directory for every file (default /tmp/connscale-soak-<time>)")
    ap.add_argument("--analyse", metavar="OUT",
                    help="run nothing: report again from the files an earlier soak left in OUT")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.analyse:
        res = reanalyse(args, args.analyse)
        print_report(res)
        print(json.dumps(compact(res), sort_keys=True))
        return 0 if res.get("pass") else 1
    for name in ("target", "minutes", "interval", "timeout", "rate", "sample_every", "steps", "ports"):
        if getattr(args, name) <= 0:
            ap.error(f"--{name.replace('_', '-')} must be positive")
    if not 10 <= args.sample_every <= 30:
        c.log(f"soak: note: --sample-every {args.sample_every:g}s is outside the advised 10-30 s")
    out = args.out or f"/tmp/connscale-soak-{time.strftime('%Y%m%d-%H%M%S')}"
    os.makedirs(out, exist_ok=True)
    c.stop_on_signals()
    res = soak(args, out)
    print_report(res)
    print(json.dumps(compact(res), sort_keys=True))
    return 0 if res.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
