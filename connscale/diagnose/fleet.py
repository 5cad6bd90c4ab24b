"""A fleet run's agents, one row each, from the timeline: what each held, and how.

Every timeline line carries each agent's row (`metrics.records.AgentRow`) with the
histogram of its second's RTTs; the line's own histogram is all of them added. So
an agent's RTT over the final hold is its seconds' histograms added (exact, not an
average of percentiles), and the merged figures of the summary stay what they are.
CPU and loop lag are its client workers' over the final hold; a second in which
any of them was saturated (`diagnose.window.WorkerLoad.saturated`) counts once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from connscale.diagnose.manifest import MANIFEST_FILE
from connscale.diagnose.records import AgentLost, AgentShare, AgentSummary, Explanation, Summary
from connscale.diagnose.window import WorkerLoad
from connscale.metrics import phases
from connscale.metrics.histograms import Percentiles, new_histogram, rtt_summary_ms
from connscale.metrics.records import KernelCounters, Stats, WorkerCount
from connscale.metrics.workers import WorkerRef


@attrs.frozen
class AgentFigures:
    """What the timeline says of one agent."""

    rtt_ms: Percentiles
    cpu_cores: float | None
    lag_ms_max: float | None
    saturated_s: int


def agent_rtt(records: Sequence[Stats], agent: str) -> Percentiles:
    """The agent's RTT over the final hold (else over the whole run), its seconds' histograms added."""
    final = [r for r in records if r.phase == phases.FINAL_HOLD]
    for span in (final, records):
        hist = new_histogram()
        for r in span:
            row = r.clients.get(agent)
            mine = row.histogram() if row is not None else None
            if mine is not None:
                hist.add(mine)
        if hist.get_total_count():
            return rtt_summary_ms(hist)
    return Percentiles()


def agent_figures(records: Sequence[Stats], agent: str) -> AgentFigures:
    final = [r for r in records if r.phase == phases.FINAL_HOLD] or list(records)
    cores: list[float] = []
    lag: float | None = None
    saturated = 0
    for r in final:
        row = r.clients.get(agent)
        if row is None or not row.connected:
            continue
        loads = [WorkerLoad.of(WorkerRef("client", agent, w)) for w in row.workers]
        cpus = [w.cpu for w in loads if w.cpu is not None and w.alive]
        if cpus:
            cores.append(sum(cpus))
        lags = [w.lag_ms_max for w in loads if w.lag_ms_max is not None]
        if lags:
            lag = max(lag or 0.0, *lags)
        if any(w.saturated for w in loads):
            saturated += 1
    cpu = round(sum(cores) / len(cores), 3) if cores else None
    return AgentFigures(agent_rtt(records, agent), cpu, lag, saturated)


def agent_rows(records: Sequence[Stats], split: Sequence[AgentShare], held: Mapping[str, int],
               peaks: Mapping[str, int], rates: Mapping[str, float | None], asked: Mapping[str, float | None],
               lost: Sequence[AgentLost]) -> tuple[AgentSummary, ...]:
    """One row per agent of the split, in its order."""
    last = records[-1] if records else None
    gone = {a.agent for a in lost}
    out = []
    for share in split:
        name = share.agent
        figures = agent_figures(records, name)
        row = last.clients.get(name) if last is not None else None
        out.append(AgentSummary(
            agent=name, host=share.host or (row.host if row is not None else ""), share=share.share,
            held=held.get(name, 0), peak_open=peaks.get(name, 0),
            failures=dict(row.failures) if row is not None else {},
            rate_asked=asked.get(name), rate_achieved=rates.get(name), rtt_ms=figures.rtt_ms,
            cpu_cores=figures.cpu_cores, lag_ms_max=figures.lag_ms_max, saturated_s=figures.saturated_s,
            lost=name in gone,
        ))
    return tuple(out)


def hub_summary(records: Sequence[Stats], run_dir: str, duration_s: float) -> Summary:
    """What a hub started on its own (`connscale server`) says of its timeline as it stops: no
    scenario, so no verdict, but the numbers a run's summary has, per agent too (each agent's
    share is the most it was ordered)."""
    last = records[-1] if records else None
    peaks: dict[str, int] = {}
    targets: dict[str, int] = {}
    hosts: dict[str, str] = {}
    peak_open = 0
    for r in records:
        peak_open = max(peak_open, r.client.open)
        for name, row in r.clients.items():
            peaks[name] = max(peaks.get(name, 0), row.open)
            targets[name] = max(targets.get(name, 0), row.target)
            hosts[name] = row.host or hosts.get(name, "")
    split = tuple(AgentShare(agent=name, host=hosts[name], share=targets[name]) for name in sorted(targets))
    figures = phases.summary_fields(records)
    summary = Summary(
        kind="hub", verdict="recorded", target=sum(targets.values()), peak_open=peak_open,
        open_at_end=last.client.open if last else 0, server_open_at_end=last.server.open if last else 0,
        ghosts=last.ghosts if last else 0, failures=last.failures() if last else {},
        pings=last.client.pings if last else 0, pongs=last.client.pongs if last else 0,
        rtt_ms=figures.rtt_ms, rtt_by_phase=figures.rtt_by_phase, rtt_final_hold_ms=figures.rtt_final_hold_ms,
        rtt_holds_ms=figures.rtt_holds_ms, duration_s=round(duration_s, 3),
        workers=last.workers if last else WorkerCount(), kernel=last.kernel if last else KernelCounters(),
        incidents=tuple(i for r in records for i in r.incidents)[:256],
        worker_losses=tuple(w for r in records for w in r.worker_losses)[:256],
        run_dir=run_dir, split=split, manifests={"hub": MANIFEST_FILE},
        explanation=Explanation(
            headline=f"a hub's own record: {len(records)} seconds, at most {peak_open:,} connections open, "
                     f"{len(targets)} agent(s); no scenario ran, so there is no verdict",
            wall="none"),
    )
    return attrs.evolve(summary, agents=agent_rows(records, split, {}, peaks, {}, {}, ()))
