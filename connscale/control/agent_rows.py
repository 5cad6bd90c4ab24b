"""What the collector says of each agent: its row of a timeline line (`metrics.records.AgentRow`),
the RTT window that row carries, and the `clients` listing (`ctl clients`).

Apart from `collect` because none of it asks anything: it reads an agent's handle
(`registry.AgentHandle`) as the collector's polling left it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from connscale.control.registry import AgentHandle
from connscale.metrics.histograms import Percentiles, encode_histogram, new_histogram, rtt_summary_ms
from connscale.metrics.records import AgentRow


class AgentWindow:
    """One agent's RTTs since the last line: its reports' histograms added, and the one report's
    own encoding kept when it sent one (the usual second), so it is not encoded again."""

    def __init__(self) -> None:
        self.hist = new_histogram()
        self._encoded: list[str] = []

    def add(self, encoded: str, hist: Any) -> None:
        self.hist.add(hist)
        self._encoded.append(encoded)

    def encoded(self) -> str:
        if len(self._encoded) == 1:
            return self._encoded[0]
        return encode_histogram(self.hist) if self.hist.get_total_count() else ""

    def percentiles(self) -> Percentiles:
        return rtt_summary_ms(self.hist)


def agent_row(agent: AgentHandle, stale_s: float | None, host: str, rtt_window_ms: Percentiles | None,
              rtt_hist: str) -> AgentRow:
    """`agent`'s row of a line: its handle and last report, with what the collector judged of it
    (its staleness, its host as the operator named it, its RTT of one second)."""
    last = agent.last
    return AgentRow(
        connected=agent.connected,
        target=agent.target,
        open=agent.open(),
        connecting=last.connecting if last is not None else 0,
        disconnects=agent.losses,
        lost_reason=agent.lost_reason,
        failures=dict(last.totals.failures) if last is not None else {},
        workers=last.workers if last is not None else (),
        # Connects per second it was asked for (its --rate, or set_rate).
        rate=agent.rate,
        stale_s=stale_s,
        host=host,
        rtt_window_ms=rtt_window_ms,
        rtt_hist=rtt_hist,
    )


def agent_listing(agents: Iterable[AgentHandle]) -> list[dict[str, Any]]:
    """`ctl clients`: each agent by name, connected or not."""
    return [
        {
            "name": a.name,
            "connected": a.connected,
            "host": a.info.host if a.info else None,
            "pid": a.info.pid if a.info else None,
            "workers": len(a.worker_targets),
            "target": a.target,
            "open": a.open(),
            "launched": a.launch is not None,
        }
        for a in sorted(agents, key=lambda a: a.name)
    ]
