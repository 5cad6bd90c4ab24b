"""`connscale run`: a whole local experiment with a verdict.

Starts a hub and one local agent as child processes on loopback, ramps to
`scenario.target` in `scenario.steps` paced steps with a hold after each,
stops early on failures, shows live progress, and writes
`runs/<timestamp>/summary.json` (the hub writes `timeline.jsonl` beside it).
Exit status 0 only when the target was held through the final hold with no
failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.internet import defer, task
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from connscale.app.startup import load_or_exit
from connscale.config.settings import Config
from connscale.metrics.histograms import new_histogram, rtt_summary_ms

AGENT_NAME = "local"


class Child(ProcessProtocol):
    """A child whose output goes to a log file; `ended` fires with its exit code."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log = open(log_path, "ab", buffering=0)
        self.ended: defer.Deferred[int] = defer.Deferred()
        self.pid: int | None = None
        self.tail: list[str] = []

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.transport.closeStdin()  # type: ignore[union-attr]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.log.write(data)
        self.tail = (self.tail + data.decode("utf-8", "replace").splitlines())[-20:]

    def processEnded(self, reason: Failure) -> None:
        self.log.close()
        code = getattr(reason.value, "exitCode", None)
        self.ended.callback(code if code is not None else -1)

    @property
    def running(self) -> bool:
        return not self.ended.called

    def signal(self, sig: str) -> None:
        if self.running:
            try:
                self.transport.signalProcess(sig)  # type: ignore[union-attr]
            except Exception:
                pass


@attrs.define
class Progress:
    """What the run watches, refreshed every second from the controller."""

    started: float
    step: int = 0
    steps: int = 0
    step_target: int = 0
    open: int = 0
    server_open: int = 0
    peak_open: int = 0
    failures: dict[str, int] = attrs.Factory(dict)
    stats: dict[str, Any] = attrs.Factory(dict)

    @property
    def failure_total(self) -> int:
        return sum(self.failures.values())


def _failures(stats: dict[str, Any]) -> dict[str, int]:
    out = dict(stats["client"]["failures"])
    for key, n in stats["server"]["failures"].items():
        out[f"server:{key}"] = n
    return out


class Run:
    def __init__(self, reactor: Any, cfg: Config, config_path: str | None, run_dir: Path, out: Callable[[str], None]) -> None:
        self.reactor = reactor
        self.cfg = cfg
        self.config_path = config_path
        self.dir = run_dir
        self.out = out
        self.secret = secrets.token_urlsafe(24)
        self.children: list[Child] = []
        self.perspective: Any = None
        self.factory: Any = None
        self.progress = Progress(started=reactor.seconds())
        self.reason = ""
        # Open at the end of the final hold, if no failure happened during it.
        self.held = 0
        self.tty = sys.stdout.isatty()
        self._last_print = 0.0

    # -- processes --------------------------------------------------------------
    def spawn(self, name: str, args: list[str]) -> Child:
        child = Child(name, self.dir / f"{name}.log")
        env = dict(os.environ, CONNSCALE_SECRET=self.secret, PYTHONUNBUFFERED="1")
        argv = [sys.executable, "-m", "connscale", *args]
        # Same working directory as ours: relative paths in the config (a
        # secret file, a CA) mean the same thing to the hub and the agent.
        self.reactor.spawnProcess(child, sys.executable, argv, env=env, path=os.getcwd())
        self.children.append(child)
        return child

    def config_args(self) -> list[str]:
        return ["--config", os.path.abspath(self.config_path)] if self.config_path else []

    @defer.inlineCallbacks
    def stop_children(self):  # type: ignore[no-untyped-def]
        for child in self.children:
            child.signal("TERM")
        for child in self.children:
            if child.running:
                timer = self.reactor.callLater(15.0, child.signal, "KILL")
                yield child.ended
                if timer.active():
                    timer.cancel()

    # -- controller ------------------------------------------------------------------
    @defer.inlineCallbacks
    def login(self, host: str, port: int, deadline: float):  # type: ignore[no-untyped-def]
        from connscale.control import dial

        while True:
            try:
                self.factory, self.perspective = yield dial.login(
                    self.reactor, host, port, "operator", self.secret.encode(), self.cfg.control.tls_ca, timeout=5
                )
                return
            except Exception:
                if self.reactor.seconds() > deadline or not self.children[0].running:
                    raise RunError("the hub did not come up: " + " | ".join(self.children[0].tail[-3:]))
                yield task.deferLater(self.reactor, 0.5, lambda: None)

    def call(self, method: str, *args: Any) -> defer.Deferred[Any]:
        return self.perspective.callRemote(method, *args)

    @defer.inlineCallbacks
    def refresh(self):  # type: ignore[no-untyped-def]
        stats = yield self.call("stats")
        p = self.progress
        p.stats = stats
        p.open = int(stats["client"]["open"])
        p.server_open = int(stats["server"]["open"])
        p.peak_open = max(p.peak_open, p.open)
        p.failures = _failures(stats)
        self.show()
        return stats

    def show(self, final: bool = False) -> None:
        p = self.progress
        now = self.reactor.seconds()
        if not (self.tty or final or now - self._last_print >= 5.0):
            return
        self._last_print = now
        rtt = p.stats.get("rtt_window_ms") or p.stats.get("rtt_ms") or {}
        p99 = rtt.get("p99")
        line = (
            f"t={now - p.started:5.1f}s step {p.step}/{p.steps} target={p.step_target} "
            f"open={p.open} server={p.server_open} failures={p.failure_total} "
            f"rtt_p99_ms={'-' if p99 is None else f'{p99:.2f}'}"
        )
        self.out(("\r" + line.ljust(100)) if self.tty and not final else line)

    # -- the scenario --------------------------------------------------------------------
    def check_failures(self) -> None:
        limit = self.cfg.scenario.max_failures
        if self.progress.failure_total > limit:
            top = ", ".join(f"{k}={v}" for k, v in sorted(self.progress.failures.items(), key=lambda kv: -kv[1])[:3])
            raise RunError(f"failures exceeded scenario.max_failures={limit}: {top}")

    def check_time(self) -> None:
        if self.reactor.seconds() - self.progress.started > self.cfg.scenario.time_limit:
            raise RunError(f"scenario.time_limit of {self.cfg.scenario.time_limit:g}s reached")

    def check_children(self) -> None:
        for child in self.children:
            if not child.running:
                raise RunError(f"{child.name} exited unexpectedly: " + " | ".join(child.tail[-2:]))

    @defer.inlineCallbacks
    def watch(self, seconds: float, until: Callable[[], bool] | None = None):  # type: ignore[no-untyped-def]
        end = self.reactor.seconds() + seconds
        while self.reactor.seconds() < end:
            yield task.deferLater(self.reactor, 1.0, lambda: None)
            yield self.refresh()
            self.check_children()
            self.check_failures()
            self.check_time()
            if until is not None and until():
                return True
        return False

    @defer.inlineCallbacks
    def execute(self):  # type: ignore[no-untyped-def]
        from connscale.config.settings import endpoint_address

        cfg, sc = self.cfg, self.cfg.scenario
        host, port = endpoint_address(cfg.control.listen) or ("127.0.0.1", 8790)
        host = host or "127.0.0.1"
        self.spawn("hub", ["server", *self.config_args(), "--console", "none", "--record-dir", str(self.dir.resolve())])
        yield self.login(host, port, self.reactor.seconds() + 30)
        self.spawn(
            "agent",
            ["agent", *self.config_args(), "--master", f"{host}:{port}", "--name", AGENT_NAME, "--rate", str(sc.rate)],
        )
        yield self.watch(30, until=lambda: any(
            c.get("connected") for c in self.progress.stats.get("clients", {}).values()
        ))
        if not any(c.get("connected") for c in self.progress.stats.get("clients", {}).values()):
            raise RunError("the local agent did not register within 30 s")
        p = self.progress
        p.steps = sc.steps
        target = 0
        ramp_time = sc.target / sc.rate
        for step in range(1, sc.steps + 1):
            p.step = step
            new_target = math.ceil(sc.target * step / sc.steps)
            placed = yield self.call("connections_start", new_target - target, AGENT_NAME)
            if placed < new_target:
                raise RunError(
                    f"step {step}: the client's routes hold at most {placed} connections "
                    "(client.per_route_max x source IPs x server ports); add source IPs or server ports"
                )
            target = p.step_target = new_target
            # Reaching a step may take its share of the ramp plus slack for
            # worker start-up; beyond that something is wrong.
            reached = yield self.watch(ramp_time / sc.steps * 3 + 15, until=lambda: p.open >= p.step_target)
            if not reached:
                raise RunError(f"step {step}: only {p.open} of {p.step_target} connections opened")
            last_hold = step == sc.steps
            hold = sc.final_hold if last_hold else sc.hold
            before = p.failure_total
            if last_hold:
                if self.tty:
                    self.out("")  # end the live line
                self.out(f"holding {p.open} connections for {hold:g}s")
            yield self.watch(hold)
            if last_hold:
                self.held = p.open if p.failure_total == before else 0

    def summary(self, ok: bool) -> dict[str, Any]:
        p = self.progress
        stats = p.stats or {}
        rtt = stats.get("rtt_ms") or rtt_summary_ms(new_histogram())
        return {
            "verdict": "held" if ok else "failed",
            "reason": self.reason,
            "target": self.cfg.scenario.target,
            "peak_open": p.peak_open,
            "held": self.held,
            "open_at_end": p.open,
            "server_open_at_end": p.server_open,
            "ghosts": stats.get("ghosts", 0),
            "failures": p.failures,
            "pings": stats.get("client", {}).get("pings", 0),
            "pongs": stats.get("client", {}).get("pongs", 0),
            "rtt_ms": {k: rtt.get(k) for k in ("p50", "p90", "p99", "max")},
            "duration_s": round(self.reactor.seconds() - p.started, 3),
            "workers": stats.get("workers", {"server": 0, "client": 0}),
            "kernel": stats.get("kernel", {}),
            "run_dir": str(self.dir.resolve()),
        }


class RunError(Exception):
    """Why a run stopped early; one line."""


def run_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="connscale run", description="Run the scenario of a config on this machine.")
    p.add_argument("-c", "--config", default=None, help="YAML config (default: ./connscale.yaml if present)")
    p.add_argument("--target", help="override scenario.target")
    p.add_argument("--run-dir", help="override run.dir (parent of the run directory)")
    args = p.parse_args(argv)
    path = args.config or ("connscale.yaml" if os.path.exists("connscale.yaml") else None)

    overrides: dict[str, object] = {}
    if args.target:
        overrides["scenario.target"] = args.target
    if args.run_dir:
        overrides["run.dir"] = args.run_dir
    cfg = load_or_exit("connscale", path, overrides)
    run_dir = Path(cfg.run.dir) / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(cfg.run.dir) / (time.strftime("%Y%m%d-%H%M%S") + f"-{suffix}")
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.as_dict(), indent=2, sort_keys=True) + "\n")
    if path and args.target is None and args.run_dir is None:
        config_path: str | None = path
    else:
        # Overrides must reach the children too: give them the effective config.
        import yaml

        effective = cfg.as_dict(redact_secrets=False)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(effective, sort_keys=False))
        config_path = str(run_dir / "config.yaml")

    def out(line: str) -> None:
        sys.stdout.write(line if line.startswith("\r") else line + "\n")
        sys.stdout.flush()

    out(f"connscale run: target {cfg.scenario.target} connections in {cfg.scenario.steps} steps at "
        f"{cfg.scenario.rate:g}/s; records in {run_dir}")
    result: dict[str, Any] = {}

    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        run = Run(reactor, cfg, config_path, run_dir, out)
        done: list[defer.Deferred[None]] = []

        @defer.inlineCallbacks
        def finish(ok: bool):  # type: ignore[no-untyped-def]
            if run.tty:
                out("")
            try:
                if run.perspective is not None:
                    yield run.refresh().addTimeout(5, reactor)
            except Exception:
                pass
            summary = run.summary(ok)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            result.update(summary)
            if run.factory is not None:
                run.factory.disconnect()
            yield run.stop_children()

        def interrupted() -> defer.Deferred[None] | None:
            # Ctrl-C or SIGTERM: what was recorded so far still gets its summary.
            if done:
                return None
            run.reason = run.reason or "interrupted"
            done.append(finish(False))
            return done[0]

        reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        ok = False
        try:
            yield run.execute()
            ok = run.held >= cfg.scenario.target
            if not ok:
                run.reason = f"held {run.held} of {cfg.scenario.target} through the final hold"
        except RunError as e:
            run.reason = str(e)
        except Exception as e:  # a bug or a dead hub: still write what we have
            run.reason = f"{type(e).__name__}: {e}"
        if not done:
            done.append(finish(ok))
        yield done[0]

    previous = signal.getsignal(signal.SIGINT)
    try:
        task.react(main)
    except SystemExit:
        pass
    finally:
        signal.signal(signal.SIGINT, previous)
    if not result:
        return 1
    rtt = result["rtt_ms"]
    out(
        f"{result['verdict'].upper()}: held={result['held']} target={result['target']} peak_open={result['peak_open']} "
        f"failures={sum(result['failures'].values())} rtt_ms p50={rtt['p50']} p99={rtt['p99']} "
        f"workers server={result['workers'].get('server')} client={result['workers'].get('client')} "
        f"duration={result['duration_s']:.0f}s"
    )
    if result["reason"]:
        out(f"reason: {result['reason']}")
    out(f"summary: {run_dir / 'summary.json'}")
    return 0 if result["verdict"] == "held" else 1
