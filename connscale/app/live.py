"""The live view of `connscale run` and `connscale ctl watch`.

Fed the controller's stats once a second. On a terminal it is a rich
dashboard redrawn in place: open / target, connect rate, pings/s, RTT of the
last second, failures by cause, ghosts, a row per agent and per worker with
its CPU and event-loop lag. When stdout is not a terminal (CI, a pipe, a
log file) it prints one plain `key=value` line every `every` seconds, which
scripts can parse like the status lines.

Rates and per-worker CPU come from two consecutive stats dicts through the
same code the report uses (`metrics.series`), so the live numbers and the
report's agree.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Callable, Mapping

import attrs

from connscale.metrics.series import build_series, failures_of, target_of, workers_of

MAX_WORKER_ROWS = 16


@attrs.frozen
class RunInfo:
    """What the driver of a run knows beyond the controller's numbers."""

    phase: str = ""
    step: int = 0
    steps: int = 0
    target: int | None = None   # the scenario's target (the stats carry what is ordered so far)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _hot(cpu: float) -> str:
    return f"[bold red]{cpu:.0f}[/]" if cpu >= 90.0 else f"{cpu:.0f}"


def _worker_load(worker: Mapping[str, Any], fallback_cpu: float | None) -> tuple[float | None, float | None]:
    """(CPU % of a core, loop lag ms): the worker's own `load` when it reports one."""
    load = worker.get("load") or {}
    cpu = load.get("cpu")
    lag = load.get("lag_ms_max")
    return (float(cpu) * 100.0 if cpu is not None else fallback_cpu), (float(lag) if lag is not None else None)


@attrs.define
class Frame:
    """One second's view: the stats plus what two consecutive stats give."""

    stats: Mapping[str, Any]
    connect_rate: float
    ping_rate: float
    worker_cpu: dict[str, float | None]

    @classmethod
    def of(cls, previous: Mapping[str, Any] | None, stats: Mapping[str, Any]) -> "Frame":
        s = build_series([previous, stats] if previous is not None else [stats])
        return cls(stats, s.connect_rate[-1], s.ping_rate[-1], {k: v[-1] for k, v in s.worker_cpu.items()})

    @property
    def rtt(self) -> Mapping[str, Any]:
        return self.stats.get("rtt_window_ms") or self.stats.get("rtt_ms") or {}

    def phase(self, info: RunInfo | None) -> str:
        return (info.phase if info and info.phase else "") or str(self.stats.get("phase") or "")


def plain_line(frame: Frame, info: RunInfo | None = None) -> str:
    """One line of `key=value` pairs, stable keys (failures as fail.<phase>.<cause>)."""
    st = frame.stats
    target = target_of(st)
    fields = [
        ("t", f"{float(st.get('elapsed_s', 0.0)):.0f}s"),
        ("phase", frame.phase(info) or "-"),
        ("open", str(st.get("client", {}).get("open", 0))),
        ("target", str(target)),
        # Someone else's server (client.url): no count of ours to show or to hold ghosts against.
        ("server_open", str(st.get("server", {}).get("open", 0)) if st.get("own_server", True) else "-"),
        ("ghosts", str(st.get("ghosts", 0)) if st.get("own_server", True) else "-"),
        ("connects_per_s", f"{frame.connect_rate:.0f}"),
        ("pings_per_s", f"{frame.ping_rate:.0f}"),
        ("rtt_p50_ms", _ms(frame.rtt.get("p50"))),
        ("rtt_p99_ms", _ms(frame.rtt.get("p99"))),
    ]
    cost = st.get("cost")
    if isinstance(cost, Mapping):
        # connscale's own processes (hub, agents, workers): what the tool takes from the box.
        fields += [("own_cores", f"{float(cost.get('cores', 0)):.2f}"),
                   ("own_rss_mb", f"{int(cost.get('rss_bytes', 0)) / 1e6:.0f}")]
    failures = failures_of(st)
    fields.append(("failures", str(sum(failures.values()))))
    for key in sorted(failures):
        if failures[key]:
            fields.append(("fail." + key.replace(":", "."), str(failures[key])))
    return " ".join(f"{k}={v}" for k, v in fields)


def dashboard(frame: Frame, info: RunInfo | None = None, title: str = "connscale") -> Any:
    """The rich renderable of one frame."""
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    st = frame.stats
    client, server = st.get("client", {}), st.get("server", {})
    opened = int(client.get("open", 0))
    ordered = target_of(st)
    goal = info.target if info and info.target else ordered
    failures = failures_of(st)
    failed = sum(failures.values())

    head = Table.grid(padding=(0, 3))
    head.add_column(justify="left")
    head.add_column(justify="left")
    head.add_column(justify="left")
    bar = ProgressBar(total=max(goal, 1), completed=min(opened, max(goal, 1)), width=28)
    head.add_row(Text.assemble(("open ", "dim"), (f"{opened:,}", "bold cyan"), (" / ", "dim"),
                               (f"{goal:,}", "bold")), bar,
                 Text.assemble(("server ", "dim"), f"{int(server.get('open', 0)):,}", ("   ghosts ", "dim"),
                               (f"{int(st.get('ghosts', 0)):,}", "bold magenta" if st.get("ghosts") else "")))
    head.add_row(Text.assemble(("connects/s ", "dim"), f"{frame.connect_rate:,.0f}", ("   pings/s ", "dim"),
                               f"{frame.ping_rate:,.0f}"),
                 Text.assemble(("RTT p50 ", "dim"), f"{_ms(frame.rtt.get('p50'))} ms", ("  p99 ", "dim"),
                               (f"{_ms(frame.rtt.get('p99'))} ms", "bold")),
                 Text.assemble(("failures ", "dim"), (f"{failed:,}", "bold red" if failed else "green"),
                               ("   ordered ", "dim"), f"{ordered:,}"))
    cost = st.get("cost")
    if isinstance(cost, Mapping):
        # What connscale itself takes (hub, agents, workers; this view's own process is in the summary).
        head.add_row(Text.assemble(("connscale itself ", "dim"), f"{float(cost.get('cores', 0)):.2f} cores"),
                     Text.assemble(("RSS ", "dim"), f"{int(cost.get('rss_bytes', 0)) / 1e6:,.0f} MB"),
                     Text.assemble(("processes ", "dim"), f"{int(cost.get('processes', 0)):,}"))
    phase = frame.phase(info)
    step = f" (step {info.step}/{info.steps})" if info and info.steps else ""
    subtitle = f"{phase}{step} · {float(st.get('elapsed_s', 0.0)):.0f} s" if phase else \
        f"{float(st.get('elapsed_s', 0.0)):.0f} s"
    parts: list[Any] = [Panel(head, title=f"[bold]{title}[/]", subtitle=subtitle, box=box.ROUNDED,
                              border_style="red" if failed else "cyan")]

    if failed:
        causes = Table(box=box.SIMPLE_HEAD, title="failures by cause", title_justify="left", expand=False)
        causes.add_column("phase:cause")
        causes.add_column("count", justify="right")
        for key, n in sorted(failures.items(), key=lambda kv: -kv[1])[:8]:
            if n:
                causes.add_row(Text(key), f"{n:,}")  # text, never markup: it came from an agent
        parts.append(causes)

    incidents = [i for i in st.get("incidents") or () if isinstance(i, Mapping)]
    if incidents:
        table = Table(box=box.SIMPLE_HEAD, title="incidents (the walls hit)", title_justify="left",
                      title_style="bold red")
        for col in ("at", "wall", "what", "fix"):
            table.add_column(col)
        for i in incidents[-3:]:
            at = i.get("elapsed_s")
            fix = i.get("fix") or []
            table.add_row("-" if at is None else f"{float(at):.0f} s", Text(str(i.get("wall", ""))),
                          Text(str(i.get("headline", ""))),
                          Text(str(fix[0] if isinstance(fix, list) and fix else fix or "")))
        parts.append(table)

    agents = Table(box=box.SIMPLE_HEAD, title="agents", title_justify="left")
    for col, justify in (("agent", "left"), ("state", "left"), ("target", "right"), ("open", "right"),
                         ("connecting", "right"), ("workers", "right"), ("failures", "right"),
                         ("busiest cpu %", "right"), ("worst lag ms", "right")):
        agents.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, a in sorted(st.get("clients", {}).items()):
        # An agent is as prompt as its busiest worker: that one's CPU and loop lag say
        # whether this agent's share of the numbers is the server's or connscale's own.
        loads = [_worker_load(w, None) for w in a.get("workers", [])]
        cpus = [c for c, _ in loads if c is not None]
        lags = [lag for _, lag in loads if lag is not None]
        state = "connected" if a.get("connected") else "[red]disconnected[/]"
        if a.get("connected") and a.get("stale_s"):
            state = f"[yellow]stale {float(a['stale_s']):g} s[/]"  # counted with its last report, this old
        agents.add_row(Text(name), state, f"{int(a.get('target', 0)):,}",
                       f"{int(a.get('open', 0)):,}", f"{int(a.get('connecting', 0)):,}", str(len(a.get("workers", []))),
                       f"{sum(int(v) for v in a.get('failures', {}).values()):,}",
                       _hot(max(cpus)) if cpus else "-", f"{max(lags):.1f}" if lags else "-")
    parts.append(agents)
    observed = observers_table(st)
    if observed is not None:
        parts.append(observed)

    rows = []
    for side, label, w in workers_of(st):
        cpu, lag = _worker_load(w, frame.worker_cpu.get(label))
        rows.append((side, label, w, cpu, lag))
    if rows:
        table = Table(box=box.SIMPLE_HEAD, title="workers", title_justify="left")
        for col, justify in (("worker", "left"), ("open", "right"), ("target", "right"), ("CPU %", "right"),
                             ("loop lag ms", "right"), ("RSS MiB", "right"), ("restarts", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        # The busiest first: with a hundred workers the saturated ones matter.
        rows.sort(key=lambda r: -(r[3] or 0.0))
        for side, label, w, cpu, lag in rows[:MAX_WORKER_ROWS]:
            rss = float((w.get("resources") or {}).get("rss_bytes", 0.0)) / 2**20
            table.add_row(
                Text(label) + (Text("") if w.get("alive", True) else Text(" (down)", "red")),
                f"{int(w.get('open', 0)):,}", f"{int(w.get('target', 0)):,}" if side == "client" else "-",
                "-" if cpu is None else _hot(cpu),
                "-" if lag is None else f"{lag:.1f}", f"{rss:.0f}" if rss else "-", str(w.get("restarts", 0)),
            )
        if len(rows) > MAX_WORKER_ROWS:
            table.caption = f"{len(rows) - MAX_WORKER_ROWS} more workers (less busy) not shown"
        parts.append(table)
    return Group(*parts)


def observers_table(stats: Mapping[str, Any]) -> Any:
    """The observed servers beside the agents: fds against their limit, connections, memory,
    accept queue (None when no observer reports)."""
    from rich import box
    from rich.table import Table

    rows = observer_rows(stats)
    if not rows:
        return None
    table = Table(box=box.SIMPLE_HEAD, title="observed servers", title_justify="left")
    for col in ("observer", "target", "pid", "fds / nofile", "established", "RSS MiB", "accept queue", "state"):
        table.add_column(col, justify="left" if col in ("observer", "target", "state") else "right")
    for row in rows:
        table.add_row(*row)
    return table


def observer_rows(stats: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row of words per observed target."""
    out = []
    for name, o in sorted((stats.get("observers") or {}).items()):
        state = "connected" if o.get("connected") else "disconnected"
        if o.get("connected") and o.get("stale_s"):
            state = f"stale {float(o['stale_s']):g} s"
        for t in o.get("targets") or ():
            procs = t.get("processes") or []
            fds = [p["fds"] for p in procs if p.get("fds") is not None]
            limits = [p["nofile_soft"] for p in procs if p.get("nofile_soft")]
            ports = {lst["port"]: lst.get("established", 0) for lst in t.get("listeners") or ()}
            queues = [f"{lst['queue']}/{lst.get('backlog') if lst.get('backlog') is not None else '?'}"
                      for lst in (t.get("listeners") or ())[:2]]
            out.append((name, str(t.get("label", "")), str(t.get("pid") or "-"),
                        f"{sum(fds):,} / {min(limits):,}" if fds and limits else (f"{sum(fds):,}" if fds else "-"),
                        f"{sum(ports.values()):,}" if ports else "-",
                        f"{sum(p.get('rss', 0) for p in procs) / 2**20:.0f}" if procs else "-",
                        " ".join(queues) or "-",
                        state if t.get("alive") else "[red]not running[/]"))
    return out


class LiveView:
    """Shows frames: a redrawn dashboard on a terminal, plain lines elsewhere."""

    def __init__(self, out: IO[str] | None = None, tty: bool | None = None, every: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, title: str = "connscale", width: int | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.every = every
        self.clock = clock
        self.title = title
        self.previous: Mapping[str, Any] | None = None
        self.frame: Frame | None = None
        self._last_line: float | None = None
        self._live: Any = None
        self._shown = True  # plain mode: whether the latest frame was printed
        self._incidents_seen = 0
        self._console: Any = None
        if self.tty:
            from rich.console import Console

            self._console = Console(file=self.out, force_terminal=True, width=width)

    def show(self, stats: Mapping[str, Any], info: RunInfo | None = None) -> None:
        self.frame = Frame.of(self.previous, stats)
        self.previous = stats
        if self.tty:
            self._draw(info)
            return
        self._announce_incidents(stats)
        now = self.clock()
        self._shown = False
        if self._last_line is None or now - self._last_line >= self.every:
            self._last_line = now
            self._shown = True
            self._write(plain_line(self.frame, info))

    def _announce_incidents(self, stats: Mapping[str, Any]) -> None:
        """Plain output: one line per new incident, when it happens."""
        incidents = [i for i in stats.get("incidents") or () if isinstance(i, Mapping)]
        for i in incidents[self._incidents_seen:]:
            fix = i.get("fix") or []
            fix_text = fix[0] if isinstance(fix, list) and fix else fix
            self._write(f"incident: {i.get('wall', '?')}: {i.get('headline', '')}"
                        + (f"; fix: {fix_text}" if fix_text else ""))
        self._incidents_seen = max(self._incidents_seen, len(incidents))

    def _draw(self, info: RunInfo | None) -> None:
        from rich.live import Live

        assert self.frame is not None
        view = dashboard(self.frame, info, self.title)
        if self._live is None:
            # Redrawn when we say so: no refresh thread next to the reactor.
            self._live = Live(view, console=self._console, auto_refresh=False, transient=False,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        self._live.update(view, refresh=True)

    def message(self, text: str) -> None:
        """A line for the record (a phase change, the verdict), above the dashboard."""
        if self._live is not None:
            self._live.console.print(text, markup=False, highlight=False)
        else:
            self._write(text)

    def final(self, info: RunInfo | None = None) -> None:
        """The last frame stays on screen; a plain output gets its last line whatever `every` says."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        elif not self.tty and self.frame is not None and not self._shown:
            self._shown = True
            self._write(plain_line(self.frame, info))

    def _write(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()
