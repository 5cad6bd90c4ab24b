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
from typing import Any, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from connscale.metrics.counters import APP_CAUSES, PHASES, PROTOCOL_KINDS
from connscale.metrics.histograms import new_histogram
from connscale.metrics.phases import record_histogram

#: Bucket bounds of the cumulative RTT histogram, in seconds.
RTT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CAUSES = frozenset(APP_CAUSES) | frozenset(errno.errorcode.values())
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
        self.latest: Mapping[str, Any] | None = None
        self.rtt = new_histogram()
        self.incidents: dict[str, int] = {}

    def observe(self, record: Mapping[str, Any]) -> None:
        hist = record_histogram(record)
        if hist is not None:
            self.rtt.add(hist)
        # A timeline line carries the incidents opened in that second.
        for incident in record.get("incidents") or ():
            wall = bounded_wall(str(incident.get("wall", "")) if isinstance(incident, Mapping) else "")
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
        if record is None:
            return
        yield from self._run(record)
        yield from self._sides(record)
        yield from self._workers(record)
        yield from self._kernel(record.get("kernel") or {})
        yield from observed_families(record.get("observers") or {})

    def _rtt_buckets(self) -> tuple[list[tuple[str, float]], int, float]:
        h = self.rtt
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

    def _run(self, r: Mapping[str, Any]) -> Iterator[Any]:
        yield GaugeMetricFamily("connscale_timeline_timestamp_seconds",
                                "Unix time of the timeline line these numbers come from", value=float(r.get("t", 0)))
        yield GaugeMetricFamily("connscale_elapsed_seconds", "Seconds since the hub started",
                                value=float(r.get("elapsed_s", 0)))
        phase = str(r.get("phase") or "")
        kind = GaugeMetricFamily("connscale_phase", "1 for the kind of phase the run is in", labels=["kind"])
        for k in (*_PHASE_KINDS, "other"):
            kind.add_metric([k], 1.0 if phase and _phase_kind(phase) == k else 0.0)
        yield kind
        step = phase.split(":", 1)[1] if ":" in phase else ""
        yield GaugeMetricFamily("connscale_phase_step", "Step of the current ramp or hold (0 outside them)",
                                value=float(step) if step.isdigit() else 0.0)
        yield GaugeMetricFamily("connscale_ghosts", "Connections clients hold open that no server holds",
                                value=float(r.get("ghosts", 0)))
        incidents = CounterMetricFamily("connscale_incidents", "Walls met (limit incidents), by wall", labels=["wall"])
        for wall, n in sorted(self.incidents.items()):
            incidents.add_metric([wall], float(n))
        yield incidents
        load = r.get("load")
        if isinstance(load, Mapping) and "measuring_side_saturated" in load:
            yield GaugeMetricFamily("connscale_measuring_side_saturated", "1 while connscale's own client workers "
                                    "are saturated (RTT and ramp rate are then connscale's)",
                                    value=1.0 if load.get("measuring_side_saturated") else 0.0)
        target = GaugeMetricFamily("connscale_target_connections", "Connections ordered, per agent", labels=["agent"])
        connected = GaugeMetricFamily("connscale_agent_connected", "1 while the agent is logged in", labels=["agent"])
        stale = GaugeMetricFamily("connscale_agent_report_age_seconds", "Age of the report an agent is counted "
                                  "with: 0 while it answers each second, more while its answer is late",
                                  labels=["agent"])
        for name, a in sorted((r.get("clients") or {}).items()):
            target.add_metric([name], float(a.get("target", 0)))
            connected.add_metric([name], 1.0 if a.get("connected") else 0.0)
            if a.get("connected") and a.get("stale_s") is not None:
                stale.add_metric([name], float(a["stale_s"]))
        yield target
        yield connected
        yield stale
        window = GaugeMetricFamily("connscale_rtt_last_second_seconds",
                                   "RTT percentiles of the latest second (quantile 1 = max)", labels=["quantile"])
        for key, q in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"), ("max", "1")):
            value = (r.get("rtt_window_ms") or {}).get(key)
            if value is not None:
                window.add_metric([q], float(value) / 1000.0)
        yield window

    def _sides(self, r: Mapping[str, Any]) -> Iterator[Any]:
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
        for side in ("client", "server"):
            counts = r.get(side) or {}
            open_.add_metric([side], float(counts.get("open", 0)))
            for name, key in (("connections_opened", "opened"), ("connections_closed", "closed"),
                              ("pings", "pings"), ("pongs", "pongs")):
                families[name].add_metric([side], float(counts.get(key, 0)))
            merged: dict[tuple[str, str], float] = {}
            for key, n in (counts.get("failures") or {}).items():
                phase, _, cause = str(key).partition(":")
                label = (phase if phase in PHASES else "other", bounded_cause(cause))
                merged[label] = merged.get(label, 0.0) + float(n)
            for (phase, cause), n in sorted(merged.items()):
                failures.add_metric([side, phase, cause], n)
            for kind, n in (counts.get("protocol") or {}).items():
                protocol.add_metric([side, kind if kind in PROTOCOL_KINDS else "other"], float(n))
        yield open_
        yield from families.values()
        yield failures
        yield protocol

    def _workers(self, r: Mapping[str, Any]) -> Iterator[Any]:
        labels = ["side", "agent", "worker"]
        open_ = GaugeMetricFamily("connscale_worker_open_connections", "Connections a worker holds", labels=labels)
        cpu = CounterMetricFamily("connscale_worker_cpu_seconds", "CPU time of a worker process", labels=labels)
        rss = GaugeMetricFamily("connscale_worker_resident_memory_bytes", "RSS of a worker process", labels=labels)
        lag = GaugeMetricFamily("connscale_worker_loop_lag_seconds", "Worst event-loop lag of a worker in the "
                                "latest second", labels=labels)
        rows = [("server", "hub", w) for w in r.get("server_workers") or []]
        rows += [("client", name, w) for name, a in sorted((r.get("clients") or {}).items()) for w in a.get("workers", [])]
        for side, agent, w in rows:
            key = [side, agent, str(int(w.get("index", 0)))]
            open_.add_metric(key, float(w.get("open", 0)))
            res = w.get("resources") or {}
            if "cpu_user_s" in res:
                cpu.add_metric(key, float(res.get("cpu_user_s", 0)) + float(res.get("cpu_system_s", 0)))
            if "rss_bytes" in res:
                rss.add_metric(key, float(res["rss_bytes"]))
            worst = (w.get("load") or {}).get("lag_ms_max")
            if worst is not None:
                lag.add_metric(key, float(worst) / 1000.0)
        yield from (open_, cpu, rss, lag)

    def _kernel(self, kernel: Mapping[str, Any]) -> Iterator[Any]:
        for key, name in _KERNEL_COUNTERS.items():
            if key in kernel:
                yield CounterMetricFamily(f"connscale_kernel_{key}", f"/proc/net/netstat TcpExt {name} of the hub's "
                                          "host", value=float(kernel[key]))
        for key, help_ in _KERNEL_GAUGES.items():
            if key in kernel:
                yield GaugeMetricFamily(f"connscale_kernel_{key}", f"/proc/net/sockstat: {help_} on the hub's host",
                                        value=float(kernel[key]))


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


def observed_families(observers: Mapping[str, Any]) -> Iterator[Any]:
    """The observed servers and their hosts (connscale observe): labelled by observer and target
    label (at most 16 targets an observer), never by pid."""
    fams = {key: GaugeMetricFamily(f"connscale_observed_{name}", text, labels=["observer", "target"])
            for key, name, text in _OBSERVED}
    hosts = {key: GaugeMetricFamily(f"connscale_observed_host_{name}", text, labels=["observer"])
             for key, name, text in _OBSERVED_HOST}
    for name, o in sorted(observers.items()):
        if not isinstance(o, Mapping) or not o.get("connected"):
            continue
        for t in (o.get("targets") or ())[:16]:
            key = [str(name), str(t.get("label", ""))[:128]]
            procs = t.get("processes") or []
            fams["alive"].add_metric(key, 1.0 if t.get("alive") else 0.0)
            fds = [p["fds"] for p in procs if p.get("fds") is not None]
            if fds:
                fams["fds"].add_metric(key, float(sum(fds)))
            limits = [p["nofile_soft"] for p in procs if p.get("nofile_soft")]
            if limits:
                fams["nofile"].add_metric(key, float(min(limits)))
            listeners = t.get("listeners") or []
            if listeners:
                ports = {lst["port"]: lst.get("established", 0) for lst in listeners}
                fams["established"].add_metric(key, float(sum(ports.values())))
                fams["queue"].add_metric(key, float(max(lst.get("queue", 0) for lst in listeners)))
            if procs:
                fams["rss"].add_metric(key, float(sum(p.get("rss", 0) for p in procs)))
        host = o.get("host") or {}
        slab = host.get("socket_slab")
        if isinstance(slab, Mapping):
            hosts["slab"].add_metric([str(name)], float(sum(v for v in slab.values() if isinstance(v, int))))
        if host.get("tcp_mem_pages") is not None:
            hosts["tcp_mem"].add_metric([str(name)], float(host["tcp_mem_pages"] * host.get("page_size", 4096)))
        if host.get("conntrack_count") is not None:
            hosts["conntrack"].add_metric([str(name)], float(host["conntrack_count"]))
        if host.get("mem_available") is not None:
            hosts["mem"].add_metric([str(name)], float(host["mem_available"]))
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
