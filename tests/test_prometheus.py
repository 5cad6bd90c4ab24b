"""/metrics: the numbers of the latest timeline line, bounded labels; off by
default; scraped from a real hub and compared with its timeline."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest

from connscale.config.loader import ConfigError, parse_config
from connscale.metrics.prometheus import TimelineCollector, bounded_cause, registry_for
from connscale.metrics.records import Stats
from connscale.metrics.timeline import read_timeline
from tests.support.procs import free_port
from tests.support.timelines import make_records
from tests.support.scrape import samples


def scrape_collector(records: list[dict[str, Any]]) -> dict:
    """The lines as the hub hands them to the collector (each checked as a `Stats`)."""
    collector = TimelineCollector()
    for r in records:
        collector.observe(Stats.from_wire(r))
    return samples(generate_latest(registry_for(collector)).decode())


def test_metrics_are_the_latest_timeline_line() -> None:
    records = make_records(fail_at_step=2)
    last = records[-1]
    last["client"]["failures"]["steady:some new cause"] = 2   # not in the vocabulary: becomes "other"
    m = scrape_collector(records)
    assert m[("connscale_timeline_timestamp_seconds", ())] == last["t"]
    assert m[("connscale_open_connections", (("side", "client"),))] == last["client"]["open"]
    assert m[("connscale_open_connections", (("side", "server"),))] == last["server"]["open"]
    assert m[("connscale_connections_opened_total", (("side", "client"),))] == last["client"]["opened"]
    assert m[("connscale_pongs_total", (("side", "client"),))] == last["client"]["pongs"]
    assert m[("connscale_failures_total", (("cause", "EADDRNOTAVAIL"), ("phase", "connect"), ("side", "client")))] \
        == last["client"]["failures"]["connect:EADDRNOTAVAIL"]
    assert m[("connscale_failures_total", (("cause", "other"), ("phase", "steady"), ("side", "client")))] == 2
    assert m[("connscale_ghosts", ())] == last["ghosts"]
    assert m[("connscale_target_connections", (("agent", "local"),))] == last["clients"]["local"]["target"]
    assert m[("connscale_phase", (("kind", "stop"),))] == 1 and m[("connscale_phase", (("kind", "ramp"),))] == 0
    assert m[("connscale_rtt_last_second_seconds", (("quantile", "0.99"),))] == pytest.approx(
        last["rtt_window_ms"]["p99"] / 1000)
    # The cumulative histogram holds every pong of the run, from the per-second histograms.
    assert m[("connscale_rtt_seconds_count", ())] == last["client"]["pongs"]
    assert m[("connscale_rtt_seconds_bucket", (("le", "+Inf"),))] == last["client"]["pongs"]
    assert m[("connscale_rtt_seconds_bucket", (("le", "0.0005"),))] <= m[("connscale_rtt_seconds_bucket", (("le", "0.005"),))]
    # Workers by index (and agent), never by pid; their CPU is cumulative seconds.
    w = last["server_workers"][1]
    key = (("agent", "hub"), ("side", "server"), ("worker", "1"))
    assert m[("connscale_worker_open_connections", key)] == w["open"]
    assert m[("connscale_worker_cpu_seconds_total", key)] == pytest.approx(
        w["resources"]["cpu_user_s"] + w["resources"]["cpu_system_s"])
    assert not any("pid" in dict(labels) for _, labels in m)


def test_incidents_are_counted_by_wall() -> None:
    records = make_records()
    incident = {"elapsed_s": 5.0, "trigger": "failures", "headline": "x"}
    records[5]["incidents"] = [{**incident, "wall": "ephemeral_ports"}]
    records[6]["incidents"] = [{**incident, "wall": "ephemeral_ports"}, {**incident, "wall": "Not A Wall!"}]
    records[-1]["load"] = {"measuring_side_saturated": True}
    m = scrape_collector(records)
    assert m[("connscale_incidents_total", (("wall", "ephemeral_ports"),))] == 2
    assert m[("connscale_incidents_total", (("wall", "other"),))] == 1
    assert m[("connscale_measuring_side_saturated", ())] == 1


def test_label_sets_are_bounded() -> None:
    assert bounded_cause("ECONNRESET") == "ECONNRESET" and bounded_cause("no_answer_from_server") != "other"
    assert bounded_cause("ERRNO_511") == "ERRNO_511"
    assert bounded_cause("reset by 10.0.0.1:4242") == "other" and bounded_cause("ERRNO_99999999") == "other"
    records = make_records()
    for i, r in enumerate(records):
        r["client"]["failures"] = {f"connect:made up {i}": 1, f"phase{i}:ECONNRESET": 1}
    m = scrape_collector(records)
    failures = {labels for name, labels in m if name == "connscale_failures_total"}
    assert failures == {(("cause", "other"), ("phase", "connect"), ("side", "client")),
                        (("cause", "ECONNRESET"), ("phase", "other"), ("side", "client"))}


def test_metrics_are_off_by_default_and_the_key_is_checked() -> None:
    assert parse_config({}).control.metrics_listen is None
    cfg = parse_config({"control": {"metrics_listen": "tcp:9108:interface=127.0.0.1"}})
    assert cfg.control.metrics_listen == "tcp:9108:interface=127.0.0.1"
    with pytest.raises(ConfigError) as e:
        parse_config({"control": {"metrics_listen": "http://0.0.0.0:9108"}})
    assert "control.metrics_listen" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"control": {"listen": "tcp:9108:interface=127.0.0.1", "metrics_listen": "tcp:9108"}})
    assert "control.metrics_listen: port 9108 is also used by control.listen" in str(e.value)


def test_metrics_listen_is_loopback_unless_asked_and_warned() -> None:
    from connscale.control.metrics_listen import metrics_endpoint

    assert metrics_endpoint("tcp:9108") == ("tcp:9108:interface=127.0.0.1", False)
    assert metrics_endpoint("tcp:9108:interface=127.0.0.2") == ("tcp:9108:interface=127.0.0.2", False)
    assert metrics_endpoint(r"tcp:9108:interface=\:\:1") == (r"tcp:9108:interface=\:\:1", False)  # Twisted escapes
    assert metrics_endpoint("tcp:9108:interface=0.0.0.0") == ("tcp:9108:interface=0.0.0.0", True)
    assert metrics_endpoint("tcp:9108:interface=192.0.2.7")[1] is True
    assert metrics_endpoint("unix:/run/connscale-metrics.sock") == ("unix:/run/connscale-metrics.sock", False)


@pytest.mark.slow
def test_scraping_a_real_hub_gives_the_numbers_of_its_timeline(tmp_path: Path) -> None:
    from tests.support.hub import Hub

    hub = Hub(tmp_path)
    port = free_port()
    hub.config.write_text(hub.config.read_text() + f"  metrics_listen: tcp:{port}\n")  # loopback by default
    proc = hub.start()
    try:
        assert f"Prometheus metrics on tcp:{port}:interface=127.0.0.1" in proc.text()
        assert "reachable beyond loopback" not in proc.text()
        with hub.agent("m1") as agent:
            hub.load(agent, "m1", 300)
            timeline = tmp_path / "rec" / "timeline.jsonl"
            deadline = time.monotonic() + 30
            while True:
                m = samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
                lines = {r.t: r for r in read_timeline(timeline)}
                line = lines.get(m.get(("connscale_timeline_timestamp_seconds", ()), -1))
                if line is not None and line.client.open == 300 and line.client.pongs > 0:
                    break
                assert time.monotonic() < deadline, json.dumps(m, default=str)[:2000]
                time.sleep(0.5)
    finally:
        proc.stop()
    assert m[("connscale_open_connections", (("side", "client"),))] == line.client.open == 300
    assert m[("connscale_open_connections", (("side", "server"),))] == line.server.open
    assert m[("connscale_pings_total", (("side", "client"),))] == line.client.pings
    assert m[("connscale_pongs_total", (("side", "server"),))] == line.server.pongs
    assert m[("connscale_ghosts", ())] == line.ghosts
    assert m[("connscale_worker_open_connections", (("agent", "m1"), ("side", "client"), ("worker", "0")))] \
        == line.clients["m1"].workers[0].open
    # The cumulative RTT histogram is the sum of every line's histogram up to that one.
    from connscale.metrics.phases import merged_histogram

    upto = merged_histogram(r for r in read_timeline(timeline) if (r.t or 0) <= (line.t or 0))
    assert m[("connscale_rtt_seconds_count", ())] == upto.get_total_count() > 0


def test_tls_handshakes_are_a_histogram_of_their_own_once_there_are_any() -> None:
    from connscale.metrics.histograms import encode_histogram, new_histogram

    records = make_records(fail_at_step=2)
    assert not any(name.startswith("connscale_tls_") for name, _ in scrape_collector(records))
    for i, r in enumerate(records):
        h = new_histogram()
        h.record_value(3000, 10)   # 3 ms
        h.record_value(40_000, i)  # 40 ms
        r["handshake_hist"] = encode_histogram(h)
    m = scrape_collector(records)
    n = 10 * len(records) + sum(range(len(records)))
    assert m[("connscale_tls_handshake_seconds_count", ())] == n
    assert m[("connscale_tls_handshake_seconds_bucket", (("le", "0.005"),))] == 10 * len(records)
    assert m[("connscale_tls_handshake_seconds_bucket", (("le", "+Inf"),))] == n


def test_tls_causes_keep_their_names_as_labels() -> None:
    assert bounded_cause("tls_unknown_ca") == "tls_unknown_ca" and bounded_cause("tls_whatever") == "other"
