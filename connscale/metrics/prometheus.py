"""`/metrics` for Prometheus: the numbers of the latest timeline second.

The collector is fed every record the controller writes to the timeline and
answers a scrape from the latest one, so a scrape and the timeline never
disagree (`connscale_timeline_timestamp_seconds` names the line it came
from). Label sets are bounded: sides and phases are fixed words, causes come
from the bounded failure vocabulary (anything else becomes `other`), workers
are labelled by index and agent name, never by pid.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from connscale.host.observed import ObserverRow
from connscale.metrics.counters import APP_CAUSES, PHASES, PROTOCOL_KINDS, TLS_CAUSES
from connscale.metrics.histograms import new_histogram
from connscale.metrics.records import KernelCounters, Stats

#: Bucket bounds of the cumulative RTT histogram, in seconds.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CAUSES = frozenset(APP_CAUSES) | TLS_CAUSES | frozenset(errno.errorcode.values())
_PHASE_KINDS = ("setup", "ramp", "hold", "final_hold", "plateau", "stop")
_KERNEL_COUNTERS = {"listen_overflows": "ListenOverflows", "listen_drops": "ListenDrops",
                    "abort_on_overflow": "TCPAbortOnOverflow"}
_KERNEL_GAUGES = {"tcp_inuse": "TCP sockets in use", "tcp_tw": "TCP sockets in TIME_WAIT",
                  "tcp_orphan": "orphaned TCP sockets", "tcp_mem_pages": "pages of TCP buffer memory"}


def bounded_cause(cause: str) -> str:
    if cause in _CAUSES or (cause.startswith("ERRNO_") and cause[6:].isdigit() and int(cause[6:]) < 4096):
        return cause
    return "other"


#: Wall ids are short words from the verdict logic's list; more distinct ones than this become "other".
MAX_WALLS = 32
_WALL = re.compile(r"^[a-z][a-z_]{0,31}$")


def bounded_wall(wall: str) -> str:
    return wall if _WALL.match(wall) else "other"


def _phase_kind(phase: str) -> str:
    kind = phase.split(":", 1)[0]
    return kind if kind in _PHASE_KINDS else "other"


class TimelineCollector(Collector):
    """Keeps the latest timeline record and the run's cumulative RTT histogram."""

    def __init__(self) -> None:
        self.latest: Stats | None = None
        self.rtt = new_histogram()
        #: Every TLS handshake since the hub started (empty without TLS).
        self.handshake = new_histogram()
        self.incidents: dict[str, int] = {}

    def observe(self, record: Stats) -> None:
        for total, hist in ((self.rtt, record.histogram()), (self.handshake, record.handshake_histogram())):
            if hist is not None:
                total.add(hist)
        # A timeline line carries the incidents opened in that second.
        for incident in record.incidents:
            wall = bounded_wall(incident.wall)
            if wall not in self.incidents and len(self.incidents) >= MAX_WALLS:
                wall = "other"
            self.incidents[wall] = self.incidents.get(wall, 0) + 1
        self.latest = record

    def collect(self) -> Iterator[Any]:
        record = self.latest
        buckets, _, total = self._rtt_buckets()
        rtt = HistogramMetricFamily("connscale_rtt_seconds", "Ping round-trip times since the hub started")
        rtt.add_metric([], buckets, total)
        yield rtt
        if self.handshake.get_total_count():
            buckets, _, total = self._rtt_buckets(self.handshake)
            shakes = HistogramMetricFamily("connscale_tls_handshake_seconds",
                                           "TLS handshake times, TCP connected to TLS ready, since the hub started")
            shakes.add_metric([], buckets, total)
            yield shakes
        if record is None:
            return
        yield from self._run(record)
        yield from self._sides(record)
        yield from self._workers(record)
        yield from self._kernel(record.kernel)
        yield from observed_families(record.observers)

    def _rtt_buckets(self, hist: Any = None) -> tuple[list[tuple[str, float]], int, float]:
        h = self.rtt if hist is None else hist
        count = h.get_total_count()
        out = []
        if count:
            values = [(item.value_iterated_to, item.count_at_value_iterated_to) for item in h.get_recorded_iterator()]
        else:
            values = []
        for bound in RTT_BUCKETS:
            limit = bound * 1e6
            out.append((repr(bound), float(sum(n for v, n in values if v <= limit))))
        out.append(("+Inf", float(count)))
        total = h.get_mean_value() * count / 1e6 if count else 0.0
        return out, count, total

    def _run(self, r: Stats) -> Iterator[Any]:
        yield GaugeMetricFamily("connscale_timeline_timestamp_seconds",
                                "Unix time of the timeline line these numbers come from", value=r.t or 0.0)
        yield GaugeMetricFamily("connscale_elapsed_seconds", "Seconds since the hub started", value=r.elapsed_s)
        phase = r.phase
        kind = GaugeMetricFamily("connscale_phase", "1 for the kind of phase the run is in", labels=["kind"])
        for k in (*_PHASE_KINDS, "other"):
            kind.add_metric([k], 1.0 if phase and _phase_kind(phase) == k else 0.0)
        yield kind
        step = phase.split(":", 1)[1] if ":" in phase else ""
        yield GaugeMetricFamily("connscale_phase_step", "Step of the current ramp or hold (0 outside them)",
                                value=float(step) if step.isdigit() else 0.0)
        yield GaugeMetricFamily("connscale_ghosts", "Connections clients hold open that no server holds",
                                value=float(r.ghosts))
        incidents = CounterMetricFamily("connscale_incidents", "Walls met (limit incidents), by wall", labels=["wall"])
        for wall, n in sorted(self.incidents.items()):
            incidents.add_metric([wall], float(n))
        yield incidents
        yield GaugeMetricFamily("connscale_measuring_side_saturated", "1 while connscale's own client workers "
                                "are saturated (RTT and ramp rate are then connscale's)",
                                value=1.0 if r.measuring_side_saturated else 0.0)
        target = GaugeMetricFamily("connscale_target_connections", "Connections ordered, per agent", labels=["agent"])
        connected = GaugeMetricFamily("connscale_agent_connected", "1 while the agent is logged in", labels=["agent"])
        stale = GaugeMetricFamily("connscale_agent_report_age_seconds", "Age of the report an agent is counted "
                                  "with: 0 while it answers each second, more while its answer is late",
                                  labels=["agent"])
        for name, a in sorted(r.clients.items()):
            target.add_metric([name], float(a.target))
            connected.add_metric([name], 1.0 if a.connected else 0.0)
            if a.connected and a.stale_s is not None:
                stale.add_metric([name], a.stale_s)
        yield target
        yield connected
        yield stale
        window = GaugeMetricFamily("connscale_rtt_last_second_seconds",
                                   "RTT percentiles of the latest second (quantile 1 = max)", labels=["quantile"])
        if r.rtt_window_ms is not None:
            last = r.rtt_window_ms
            for value, q in ((last.p50, "0.5"), (last.p90, "0.9"), (last.p99, "0.99"), (last.max, "1")):
                if value is not None:
                    window.add_metric([q], value / 1000.0)
        yield window

    def _sides(self, r: Stats) -> Iterator[Any]:
        open_ = GaugeMetricFamily("connscale_open_connections", "Connections established now", labels=["side"])
        families = {
            name: CounterMetricFamily(f"connscale_{name}", help_, labels=["side"])
            for name, help_ in (("connections_opened", "Connections established"),
                                ("connections_closed", "Connections closed"),
                                ("pings", "Pings sent (client) or answered (server)"),
                                ("pongs", "Pongs received (client) or sent (server)"))
        }
        failures = CounterMetricFamily("connscale_failures", "Failures by side, phase and cause",
                                       labels=["side", "phase", "cause"])
        protocol = CounterMetricFamily("connscale_protocol_violations", "Protocol violations by kind",
                                       labels=["side", "kind"])
        for side, counts in (("client", r.client), ("server", r.server)):
            open_.add_metric([side], float(counts.open))
            for name, value in (("connections_opened", counts.opened), ("connections_closed", counts.closed),
                                ("pings", counts.pings), ("pongs", counts.pongs)):
                families[name].add_metric([side], float(value))
            merged: dict[tuple[str, str], float] = {}
            for key, n in counts.failures.items():
                phase, _, cause = str(key).partition(":")
                label = (phase if phase in PHASES else "other", bounded_cause(cause))
                merged[label] = merged.get(label, 0.0) + float(n)
            for (phase, cause), total in sorted(merged.items()):
                failures.add_metric([side, phase, cause], total)
            for kind, n in counts.protocol.items():
                protocol.add_metric([side, kind if kind in PROTOCOL_KINDS else "other"], float(n))
        yield open_
        yield from families.values()
        yield failures
        yield protocol

    def _workers(self, r: Stats) -> Iterator[Any]:
        labels = ["side", "agent", "worker"]
        open_ = GaugeMetricFamily("connscale_worker_open_connections", "Connections a worker holds", labels=labels)
        cpu = CounterMetricFamily("connscale_worker_cpu_seconds", "CPU time of a worker process", labels=labels)
        rss = GaugeMetricFamily("connscale_worker_resident_memory_bytes", "RSS of a worker process", labels=labels)
        lag = GaugeMetricFamily("connscale_worker_loop_lag_seconds", "Worst event-loop lag of a worker in the "
                                "latest second", labels=labels)
        for ref in r.worker_rows():
            w = ref.row
            key = [ref.side, ref.agent, str(w.index)]
            open_.add_metric(key, float(w.open))
            if w.cpu_s is not None:
                cpu.add_metric(key, w.cpu_s)
            if w.rss_bytes is not None:
                rss.add_metric(key, w.rss_bytes)
            if w.lag_ms_max is not None:
                lag.add_metric(key, w.lag_ms_max / 1000.0)
        yield from (open_, cpu, rss, lag)

    def _kernel(self, kernel: KernelCounters) -> Iterator[Any]:
        known = kernel.to_wire()  # the counters this host has, by name
        for key, name in _KERNEL_COUNTERS.items():
            if key in known:
                yield CounterMetricFamily(f"connscale_kernel_{key}", f"/proc/net/netstat TcpExt {name} of the hub's "
                                          "host", value=float(known[key]))  # type: ignore[arg-type]
        for key, help_ in _KERNEL_GAUGES.items():
            if key in known:
                yield GaugeMetricFamily(f"connscale_kernel_{key}", f"/proc/net/sockstat: {help_} on the hub's host",
                                        value=float(known[key]))  # type: ignore[arg-type]


#: (key, metric name after connscale_observed_, help) of each observed target, and of its host.
_OBSERVED = (
    ("fds", "open_files", "Open files of the observed server's processes"),
    ("nofile", "open_files_limit", "Lowest RLIMIT_NOFILE (soft) among the observed server's processes"),
    ("established", "established_connections", "Connections established on the observed server's listening ports"),
    ("rss", "resident_memory_bytes", "RSS of the observed server's processes"),
    ("queue", "accept_queue", "Connections waiting in the observed server's accept queue (its longest listener)"),
    ("alive", "up", "1 while the observed server runs"),
)
_OBSERVED_HOST = (
    ("slab", "socket_slab_bytes", "Kernel memory of the socket slab caches on the observer's host"),
    ("tcp_mem", "tcp_memory_bytes", "TCP buffer memory on the observer's host (sockstat mem)"),
    ("conntrack", "conntrack_entries", "Connections tracked by nf_conntrack on the observer's host"),
    ("mem", "memory_available_bytes", "MemAvailable of the observer's host"),
)


def observed_families(observers: Mapping[str, ObserverRow]) -> Iterator[Any]:
    """The observed servers and their hosts (connscale observe): labelled by observer and target
    label (at most 16 targets an observer), never by pid."""
    fams = {key: GaugeMetricFamily(f"connscale_observed_{name}", text, labels=["observer", "target"])
            for key, name, text in _OBSERVED}
    hosts = {key: GaugeMetricFamily(f"connscale_observed_host_{name}", text, labels=["observer"])
             for key, name, text in _OBSERVED_HOST}
    for name, o in sorted(observers.items()):
        if not o.connected:
            continue
        for t in o.targets[:16]:
            key = [name, t.label[:128]]
            fams["alive"].add_metric(key, 1.0 if t.alive else 0.0)
            if t.fds is not None:
                fams["fds"].add_metric(key, float(t.fds))
            limits = [p.nofile_soft for p in t.processes if p.nofile_soft]
            if limits:
                fams["nofile"].add_metric(key, float(min(limits)))
            if t.established is not None:
                fams["established"].add_metric(key, float(t.established))
                fams["queue"].add_metric(key, float(max(lst.queue for lst in t.listeners)))
            if t.processes:
                fams["rss"].add_metric(key, float(t.rss))
        host = o.host
        if host is None:
            continue
        if host.socket_slab_bytes is not None:
            hosts["slab"].add_metric([name], float(host.socket_slab_bytes))
        if host.tcp_mem_bytes is not None:
            hosts["tcp_mem"].add_metric([name], float(host.tcp_mem_bytes))
        if host.conntrack_count is not None:
            hosts["conntrack"].add_metric([name], float(host.conntrack_count))
        if host.mem_available is not None:
            hosts["mem"].add_metric([name], float(host.mem_available))
    yield from fams.values()
    yield from hosts.values()


def registry_for(collector: TimelineCollector) -> CollectorRegistry:
    """A registry of our own: the process-global one would mix in whatever else registered there."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def metrics_site(collector: TimelineCollector) -> Any:
    """A twisted.web Site serving `/metrics` (and a one-line pointer at `/`).

    Rendered in the reactor thread: a scrape formats one record, and
    prometheus_client's own Twisted resource would import the global
    reactor and hand every scrape to a thread pool.
    """
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    registry = registry_for(collector)

    class Metrics(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
            return generate_latest(registry)

    root = Resource()
    root.putChild(b"", Data(b"connscale hub: see /metrics\n", "text/plain"))
    root.putChild(b"metrics", Metrics())
    site = Site(root)
    site.displayTracebacks = False
    return site
