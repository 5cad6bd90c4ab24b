"""What a finished run says: `summary.json` (a `diagnose.records.Summary`), its one verdict
line and its explanation."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from connscale.app.scenario import Progress
from connscale.config.settings import Config, ScenarioSettings
from connscale.diagnose.incidents import saturated_phases
from connscale.diagnose.fleet import agent_rows
from connscale.diagnose.records import AgentShare, Explanation, Preflight, SearchResult, Summary, TlsSummary
from connscale.diagnose.verdict import explain, explain_search_verdict
from connscale.metrics.phases import PhaseFigures
from connscale.metrics.records import Stats
from connscale.metrics.snapshot import Snapshot


def build(progress: Progress, settings: ScenarioSettings, ok: bool, reason: str,
          duration_s: float, run_dir: str, preflight: Preflight | None = None,
          search: SearchResult | None = None) -> Summary:
    p = progress
    # Before the hub's first answer there is nothing but the run's own record.
    stats = p.stats if p.stats is not None else Stats(elapsed_s=0.0, client=Snapshot(), server=Snapshot())
    return Summary(
        # A search ends with a knee (see `search`) rather than a held target.
        verdict=("knee" if ok else "failed") if search is not None else ("held" if ok else "failed"),
        reason=reason,
        target=settings.target,
        peak_open=p.peak_open,
        held=p.held,
        open_at_end=p.open,
        # None without a server of our own (client.url): nothing counted it.
        server_open_at_end=p.server_open if stats.own_server else None,
        ghosts=stats.ghosts,
        failures=p.failures,
        counted_failures=p.counted_failures,
        pings=stats.client.pings,
        pongs=stats.client.pongs,
        rtt_ms=stats.rtt_ms,
        duration_s=round(duration_s, 3),
        workers=stats.workers,
        kernel=stats.kernel,
        phases=tuple(p.phases),
        steps=tuple(s.as_step() for s in p.step_log),
        # Setup time before the ramp: the agent starting the client workers the target needs.
        client_workers_start_s=p.client_workers_start_s,
        events=tuple(p.events),
        run_dir=run_dir,
        # Walls met, each as the hub snapshotted it (see connscale.diagnose.incidents).
        incidents=stats.incidents,
        # Workers that died during the run: who, how, when, and the connections lost with them.
        worker_losses=stats.worker_losses,
        # What `connscale check` said of this host before the run.
        preflight=preflight,
        search=search,
        # The observed server exiting, restarting, replaced (connscale observe), timed by the hub.
        target_events=stats.target_events,
        # Agents of the fleet lost on the way, with the connections that went with them.
        lost_agents=tuple(p.lost_agents),
    )


def with_agents(summary: Summary, progress: Progress, records: Sequence[Stats]) -> Summary:
    """The summary with one row per agent of its split (a run of one agent: its own row too)."""
    p = progress
    split = summary.split or tuple(
        AgentShare(agent=name, share=share, host=_host(records, name)) for name, share in p.shares.items())
    rates = {name: p.rate_achieved(name) for name in p.shares}
    target = summary.target or 1
    asked = {name: (round(p.step_log[0].rate_asked * share / target, 1) if p.step_log else None)
             for name, share in p.shares.items()}
    rows = agent_rows(records, split, p.held_by_agent, p.peak_by_agent, rates, asked, p.lost_agents)
    return attrs.evolve(summary, agents=rows)


def _host(records: Sequence[Stats], name: str) -> str:
    for r in reversed(records):
        row = r.clients.get(name)
        if row is not None and row.host:
            return row.host
    return ""


def with_phases(summary: Summary, figures: PhaseFigures) -> Summary:
    """The summary with the RTT the timeline gives per phase, of the final hold and of all holds."""
    return attrs.evolve(summary, rtt_ms=figures.rtt_ms, rtt_by_phase=figures.rtt_by_phase,
                        rtt_final_hold_ms=figures.rtt_final_hold_ms, rtt_holds_ms=figures.rtt_holds_ms)


def explanation(result: Summary, records: Sequence[Stats] | None = None) -> Explanation:
    """Why it held or where it stopped, in words, with the fix (connscale.diagnose.verdict);
    called once the summary has its per-phase RTT. `records`: the timeline, which says in
    which phases connscale's own clients were saturated."""
    if result.search is not None:
        return explain_search_verdict(result.search)
    final = result.rtt_final_hold_ms
    return explain(
        result.verdict, result.target, held=result.held, peak_open=result.peak_open, reason=result.reason,
        incidents=result.incidents, preflight=result.preflight,
        rtt=final if final.p99 is not None else result.rtt_ms,
        saturated_phases=saturated_phases(records) if records is not None else None,
        losses=result.worker_losses,
        target_events=result.target_events,
        lost_agents=result.lost_agents,
    )


def tls_fields(cfg: Config, stats: Stats | None) -> TlsSummary:
    """`server`: auto (a certificate made for the run), cert, or None; `client`: whether the
    clients spoke TLS; `resumed`: handshakes that resumed a session."""
    server = cfg.server.tls
    return TlsSummary(
        server=("auto" if server.auto else "cert") if server.enabled else None,
        client=cfg.client.tls.enabled,
        resumed=stats.client.resumed if stats is not None else 0,
    )


def tls_line(summary: Summary) -> str | None:
    """`tls: handshake p50=.. p99=.. ms, ...` after the verdict, when the clients spoke TLS."""
    if not summary.tls.client:
        return None
    hs, rate, mem = summary.handshake_ms, summary.tls_connect_rate, summary.mem_per_conn_bytes

    def kb(value: float | None) -> str:
        return "-" if value is None else f"{value / 1024:.1f} KiB"

    return (f"tls: handshake p50={hs.p50} p99={hs.p99} ms ({hs.count} handshakes, "
            f"{summary.tls.resumed} resumed); connects/s max={rate.max} mean={rate.mean}; "
            f"memory per TLS connection server={kb(mem.server)} client={kb(mem.client)}")


def verdict_line(summary: Summary) -> str:
    rtt = summary.rtt_ms
    workers = summary.workers
    final = summary.rtt_final_hold_ms
    if final.p50 is not None:
        # The hold's latency, with the whole run's p99 beside it: a ramp's
        # connect bursts must not pass for the latency of holding.
        latency = f"rtt_ms final_hold p50={final.p50} p99={final.p99} whole_run p99={rtt.p99}"
    else:
        latency = f"rtt_ms p50={rtt.p50} p99={rtt.p99}"
    return (
        f"{summary.verdict.upper()}: held={summary.held} target={summary.target} "
        f"peak_open={summary.peak_open} failures={summary.failure_total} "
        f"{latency} "
        f"workers server={workers.server} client={workers.client} "
        f"duration={summary.duration_s:.0f}s"
    )
