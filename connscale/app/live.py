"""The live view of `connscale run` and `connscale ctl watch`.

Fed the controller's stats once a second. On a terminal it is a rich
dashboard redrawn in place: open / target, connect rate, pings/s, RTT of the
last second, failures by cause, ghosts, a row per agent and per worker with
its CPU and event-loop lag. When stdout is not a terminal (CI, a pipe, a
log file) it prints one plain `key=value` line every `every` seconds, which
scripts can parse like the status lines.

Rates and per-worker CPU come from two consecutive stats records through the
same code the report uses (`metrics.series`), so the live numbers and the
report's agree.
"""

from __future__ import annotations

import sys
import time
from typing import IO, TYPE_CHECKING, Any, Callable

import attrs

from connscale.metrics.histograms import Percentiles
from connscale.metrics.records import Stats
from connscale.metrics.series import build_series
from connscale.metrics.workers import WorkerRow

if TYPE_CHECKING:  # rich is imported when a dashboard is drawn, never by a hub or an agent
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

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


def _worker_load(worker: WorkerRow, fallback_cpu: float | None) -> tuple[float | None, float | None]:
    """(CPU % of a core, loop lag ms): the worker's own probe when it reports one."""
    return (worker.cpu * 100.0 if worker.cpu is not None else fallback_cpu), worker.lag_ms_max


@attrs.define
class Frame:
    """One second's view: the stats plus what two consecutive stats give."""

    stats: Stats
    connect_rate: float
    ping_rate: float
    worker_cpu: dict[str, float | None]

    @classmethod
    def of(cls, previous: Stats | None, stats: Stats) -> "Frame":
        s = build_series([previous, stats] if previous is not None else [stats])
        return cls(stats, s.connect_rate[-1], s.ping_rate[-1], {k: v[-1] for k, v in s.worker_cpu.items()})

    @property
    def rtt(self) -> Percentiles:
        """The RTT of the last second (the timeline's per-second window; none: nothing pinged):
        never the hub's figure since it started, which hides a slow second and shows an idle one's
        old RTT."""
        return self.stats.rtt_window_ms or Percentiles()

    @property
    def rtt_second(self) -> float | None:
        """Which second that is: the elapsed_s of its timeline line (a line's own: its elapsed_s)."""
        st = self.stats
        return st.window_elapsed_s if st.window_elapsed_s is not None else (st.elapsed_s if st.t else None)

    def phase(self, info: RunInfo | None) -> str:
        return (info.phase if info and info.phase else "") or self.stats.phase


def plain_line(frame: Frame, info: RunInfo | None = None) -> str:
    """One line of `key=value` pairs, stable keys (failures as fail.<phase>.<cause>)."""
    st = frame.stats
    fields = [
        ("t", f"{st.elapsed_s:.0f}s"),
        ("phase", frame.phase(info) or "-"),
        ("open", str(st.client.open)),
        ("target", str(st.target)),
        # Someone else's server (client.url): no count of ours to show or to hold ghosts against.
        ("server_open", str(st.server.open) if st.own_server else "-"),
        ("ghosts", str(st.ghosts) if st.own_server else "-"),
        ("connects_per_s", f"{frame.connect_rate:.0f}"),
        ("pings_per_s", f"{frame.ping_rate:.0f}"),
        ("rtt_p50_ms", _ms(frame.rtt.p50)),
        ("rtt_p99_ms", _ms(frame.rtt.p99)),
        # The second those are of, and the figure since the hub started, labelled as such.
        ("rtt_second", "-" if frame.rtt_second is None else f"{frame.rtt_second:g}"),
        ("rtt_since_start_p99_ms", _ms(st.rtt_ms.p99)),
    ]
    if st.cost is not None:
        # connscale's own processes (hub, agents, observers, workers): what the tool takes from the box.
        fields += [("own_cores", f"{st.cost.cores:.2f}"), ("own_rss_mb", f"{st.cost.rss_bytes / 1e6:.0f}")]
    if len(st.clients) > 1:
        # A fleet: each agent's count and last second's RTT beside the merged ones.
        for name, a in sorted(st.clients.items()):
            fields += [(f"agent.{name}.open", str(a.open) if a.connected else "lost"),
                       (f"agent.{name}.rtt_p99_ms", _ms(a.rtt_window_ms.p99 if a.rtt_window_ms else None))]
    failures = st.failures()
    fields.append(("failures", str(sum(failures.values()))))
    for key in sorted(failures):
        if failures[key]:
            fields.append(("fail." + key.replace(":", "."), str(failures[key])))
    return " ".join(f"{k}={v}" for k, v in fields)


def dashboard(frame: Frame, info: RunInfo | None = None, title: str = "connscale") -> Group:
    """The rich renderable of one frame: the head panel, then a table for each thing to show."""
    from rich.console import Group

    st = frame.stats
    failures = st.failures()
    tables = (failures_table(failures), incidents_table(st), agents_table(st), observers_table(st),
              workers_table(frame))
    return Group(head_panel(frame, info, title, sum(failures.values())), *(t for t in tables if t is not None))


def head_panel(frame: Frame, info: RunInfo | None, title: str, failed: int) -> Panel:
    """Open against the target, rates, RTT, failures and connscale's own cost, in a panel whose
    subtitle says the phase and the step."""
    from rich import box
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    st = frame.stats
    opened = st.client.open
    ordered = st.target
    goal = info.target if info and info.target else ordered
    head = Table.grid(padding=(0, 3))
    head.add_column(justify="left")
    head.add_column(justify="left")
    head.add_column(justify="left")
    bar = ProgressBar(total=max(goal, 1), completed=min(opened, max(goal, 1)), width=28)
    head.add_row(Text.assemble(("open ", "dim"), (f"{opened:,}", "bold cyan"), (" / ", "dim"),
                               (f"{goal:,}", "bold")), bar,
                 Text.assemble(("server ", "dim"), f"{st.server.open:,}", ("   ghosts ", "dim"),
                               (f"{st.ghosts:,}", "bold magenta" if st.ghosts else "")))
    head.add_row(Text.assemble(("connects/s ", "dim"), f"{frame.connect_rate:,.0f}", ("   pings/s ", "dim"),
                               f"{frame.ping_rate:,.0f}"),
                 Text.assemble(("RTT last second p50 ", "dim"), f"{_ms(frame.rtt.p50)} ms", ("  p99 ", "dim"),
                               (f"{_ms(frame.rtt.p99)} ms", "bold"), ("  since start p99 ", "dim"),
                               f"{_ms(st.rtt_ms.p99)} ms"),
                 Text.assemble(("failures ", "dim"), (f"{failed:,}", "bold red" if failed else "green"),
                               ("   ordered ", "dim"), f"{ordered:,}"))
    cost = st.cost
    if cost is not None:
        # What connscale itself takes (hub, agents, observers, workers; this view's own process is
        # in the summary).
        head.add_row(Text.assemble(("connscale itself ", "dim"), f"{cost.cores:.2f} cores"),
                     Text.assemble(("RSS ", "dim"), f"{cost.rss_bytes / 1e6:,.0f} MB"),
                     Text.assemble(("processes ", "dim"), f"{cost.processes:,}"))
    phase = frame.phase(info)
    step = f" (step {info.step}/{info.steps})" if info and info.steps else ""
    subtitle = f"{phase}{step} · {st.elapsed_s:.0f} s" if phase else f"{st.elapsed_s:.0f} s"
    return Panel(head, title=f"[bold]{title}[/]", subtitle=subtitle, box=box.ROUNDED,
                 border_style="red" if failed else "cyan")


def failures_table(failures: dict[str, int]) -> Table | None:
    """The eight commonest failures by phase:cause (None when nothing failed)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not sum(failures.values()):
        return None
    causes = Table(box=box.SIMPLE_HEAD, title="failures by cause", title_justify="left", expand=False)
    causes.add_column("phase:cause")
    causes.add_column("count", justify="right")
    for key, n in sorted(failures.items(), key=lambda kv: -kv[1])[:8]:
        if n:
            causes.add_row(Text(key), f"{n:,}")  # text, never markup: it came from an agent
    return causes


def incidents_table(stats: Stats) -> Table | None:
    """The last three walls hit, with their first fix (None before the first)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not stats.incidents:
        return None
    table = Table(box=box.SIMPLE_HEAD, title="incidents (the walls hit)", title_justify="left",
                  title_style="bold red")
    for col in ("at", "wall", "what", "fix"):
        table.add_column(col)
    for i in stats.incidents[-3:]:
        table.add_row(f"{i.elapsed_s:.0f} s", Text(i.wall), Text(i.headline), Text(i.fix[0] if i.fix else ""))
    return table


def agents_table(stats: Stats) -> Table:
    """A row per agent: its state, counts, RTT, and its busiest worker's CPU and loop lag."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    agents = Table(box=box.SIMPLE_HEAD, title="agents", title_justify="left")
    for col, justify in (("agent", "left"), ("host", "left"), ("state", "left"), ("target", "right"),
                         ("open", "right"), ("connecting", "right"), ("workers", "right"), ("failures", "right"),
                         ("RTT p99 ms", "right"), ("busiest cpu %", "right"), ("worst lag ms", "right")):
        agents.add_column(col, justify=justify)  # type: ignore[arg-type]
    for name, a in sorted(stats.clients.items()):
        # An agent is as prompt as its busiest worker: that one's CPU and loop lag say
        # whether this agent's share of the numbers is the server's or connscale's own.
        loads = [_worker_load(w, None) for w in a.workers]
        cpus = [c for c, _ in loads if c is not None]
        lags = [lag for _, lag in loads if lag is not None]
        state = "connected" if a.connected else "[red]disconnected[/]"
        if a.connected and a.stale_s:
            state = f"[yellow]stale {a.stale_s:g} s[/]"  # counted with its last report, this old
        agents.add_row(Text(name), Text(a.host), state, f"{a.target:,}", f"{a.open:,}", f"{a.connecting:,}",
                       str(len(a.workers)), f"{sum(a.failures.values()):,}",
                       _ms(a.rtt_window_ms.p99 if a.rtt_window_ms else None),
                       _hot(max(cpus)) if cpus else "-", f"{max(lags):.1f}" if lags else "-")
    return agents


def workers_table(frame: Frame) -> Table | None:
    """The busiest workers of both sides, MAX_WORKER_ROWS at most (None without workers)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = []
    for ref in frame.stats.worker_rows():
        cpu, lag = _worker_load(ref.row, frame.worker_cpu.get(ref.label))
        rows.append((ref.side, ref.label, ref.row, cpu, lag))
    if not rows:
        return None
    table = Table(box=box.SIMPLE_HEAD, title="workers", title_justify="left")
    for col, justify in (("worker", "left"), ("open", "right"), ("target", "right"), ("CPU %", "right"),
                         ("loop lag ms", "right"), ("RSS MiB", "right"), ("restarts", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    # The busiest first: with a hundred workers the saturated ones matter.
    rows.sort(key=lambda r: -(r[3] or 0.0))
    for side, label, w, cpu, lag in rows[:MAX_WORKER_ROWS]:
        rss = (w.rss_bytes or 0.0) / 2**20
        table.add_row(
            Text(label) + (Text("") if w.alive else Text(" (down)", "red")),
            f"{w.open:,}", f"{w.target:,}" if side == "client" else "-",
            "-" if cpu is None else _hot(cpu),
            "-" if lag is None else f"{lag:.1f}", f"{rss:.0f}" if rss else "-", str(w.restarts),
        )
    if len(rows) > MAX_WORKER_ROWS:
        table.caption = f"{len(rows) - MAX_WORKER_ROWS} more workers (less busy) not shown"
    return table


def observers_table(stats: Stats) -> Table | None:
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


def observer_rows(stats: Stats) -> list[tuple[Any, ...]]:
    """One row per observed target (its observer's name and its label as given: Text, never markup)."""
    from rich.text import Text

    out: list[tuple[Any, ...]] = []
    for name, o in sorted(stats.observers.items()):
        state = "connected" if o.connected else "disconnected"
        if o.connected and o.stale_s:
            state = f"stale {o.stale_s:g} s"
        for t in o.targets:
            limits = [p.nofile_soft for p in t.processes if p.nofile_soft]
            queues = [f"{lst.queue}/{lst.backlog if lst.backlog is not None else '?'}" for lst in t.listeners[:2]]
            fds = t.fds
            out.append((Text(name), Text(t.label), str(t.pid or "-"),
                        f"{fds:,} / {min(limits):,}" if fds is not None and limits else
                        (f"{fds:,}" if fds is not None else "-"),
                        f"{t.established:,}" if t.established is not None else "-",
                        f"{t.rss / 2**20:.0f}" if t.processes else "-",
                        " ".join(queues) or "-",
                        state if t.alive else "[red]not running[/]"))
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
        self.previous: Stats | None = None
        self.frame: Frame | None = None
        self._last_line: float | None = None
        self._live: Any = None
        self._shown = True  # plain mode: whether the latest frame was printed
        self._incidents_seen = 0
        self._console: Any = None
        if self.tty:
            from rich.console import Console

            self._console = Console(file=self.out, force_terminal=True, width=width)

    def show(self, stats: Stats, info: RunInfo | None = None) -> None:
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

    def _announce_incidents(self, stats: Stats) -> None:
        """Plain output: one line per new incident, when it happens."""
        for i in stats.incidents[self._incidents_seen:]:
            self._write(f"incident: {i.wall or '?'}: {i.headline}" + (f"; fix: {i.fix[0]}" if i.fix else ""))
        self._incidents_seen = max(self._incidents_seen, len(stats.incidents))

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
