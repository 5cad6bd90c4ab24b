"""`connscale run` with `server.tls: auto`: how many TLS connections this box holds, end to end.

A real hub, server workers (SO_REUSEPORT, each loading the run's certificate), an agent
and its client workers, all speaking TLS on loopback; the summary's TLS figures are
recomputed here from the timeline, independently of the code that wrote them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from connscale.metrics.histograms import decode_histogram, new_histogram
from tests.support.procs import connscale, free_port, free_ports

pytestmark = pytest.mark.slow

TARGET = 3000


def write_config(tmp: Path) -> Path:
    ports = free_ports(2)
    path = tmp / "run.yaml"
    path.write_text(f"""
server: {{ports: "{ports[0]}-{ports[1]}", tls: auto}}
client:
  server: "127.0.0.1:{ports[0]}-{ports[1]}"
  interval: 2
  timeout: 5      # generous: the box may be busy; the run is about holding
control: {{listen: "tcp:{free_port()}:interface=127.0.0.1", console: none}}
scenario: {{target: {TARGET}, rate: 1000, steps: 2, hold: 1, final_hold: 3, time_limit: 90}}
run: {{dir: runs}}
""")
    return path


def memory_per_connection(records: list[dict[str, Any]], side: str) -> float:
    """A side's workers' RSS growth per connection opened, from the last second the observer read
    before the first connection to the first second at the clients' peak (the memory table's
    connscale_<side>_rss row, `opened`: the one figure of user memory per connection)."""
    live = [r for r in records if r["phase"] != "stop"]
    base = None
    for i, r in enumerate(live):
        if r["client"]["open"] > 0:
            break
        if any(o.get("targets") for o in r["observers"].values()):
            base = i
    assert base is not None, "no observer's reading before the first connection"
    top = max(r["client"]["open"] for r in live)
    peak = next(i for i, r in enumerate(live) if r["client"]["open"] >= top)

    def rss(r: dict[str, Any]) -> float:
        rows = r["server_workers"] if side == "server" else [
            w for a in r["clients"].values() if a["connected"] for w in a["workers"]]
        return sum(w["resources"].get("rss_bytes", 0) for w in rows if w["alive"])

    return (rss(live[peak]) - rss(live[base])) / (live[peak]["client"]["open"] - live[base]["client"]["open"])


def test_a_run_holds_tls_connections_and_says_what_each_costs(tmp_path: Path) -> None:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    # Gated on the TLS metrics (limits any run that held passes: what is checked is that they are read).
    r = subprocess.run(connscale("run", "-c", str(write_config(tmp_path)), "--threshold", "tls_handshake_p99_ms <= 60s",
                                 "--threshold", "tls_connect_rate_max >= 1"), capture_output=True, text=True,
                       timeout=150, env=env, cwd=tmp_path)
    (summary_path,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"HELD: held={TARGET} target={TARGET}" in r.stdout and summary["failures"] == {}
    run_dir = Path(summary["run_dir"])
    records = [json.loads(line) for line in (run_dir / "timeline.jsonl").read_text().splitlines()]

    # The certificate was made for this run, in its directory, the key private to us;
    # the run's clients trust it: verification stayed on.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["server"]["tls"]["auto"] is True
    cert, key = Path(config["server"]["tls"]["cert"]), Path(config["server"]["tls"]["key"])
    assert cert.parent == run_dir / "tls" and key.stat().st_mode & 0o777 == 0o600
    assert (run_dir / "tls").stat().st_mode & 0o777 == 0o700
    assert config["client"]["tls"] == {**config["client"]["tls"], "enabled": True, "verify": True,
                                       "ca_file": str(cert)}
    assert summary["tls"] == {"server": "auto", "client": True, "resumed": 0}
    assert max(rec["server"]["open"] for rec in records) == TARGET

    # Every connection's handshake is in the timeline, one histogram a second; the summary's
    # percentiles are those of their sum.
    merged = new_histogram()
    per_second = []
    for rec in records:
        hist = decode_histogram(rec["handshake_hist"]) if rec["handshake_hist"] else new_histogram()
        merged.add(hist)
        per_second.append(hist.get_total_count())
    assert merged.get_total_count() == TARGET == summary["handshake_ms"]["count"]
    shakes = summary["handshake_ms"]
    assert shakes["p50"] == merged.get_value_at_percentile(50) / 1000.0
    assert shakes["p99"] == merged.get_value_at_percentile(99) / 1000.0 and shakes["p99"] >= shakes["p50"] > 0
    assert summary["tls_connect_rate"]["max"] == max(per_second)
    busy = [n for n in per_second if n]
    assert summary["tls_connect_rate"]["mean"] == round(sum(busy) / len(busy), 1)
    # The headline metrics are those figures, and the thresholds read them.
    assert summary["metrics"]["tls_handshake_p99_ms"] == shakes["p99"]
    assert summary["metrics"]["tls_connect_rate_max"] == max(per_second)
    assert [(t["metric"], t["value"], t["passed"]) for t in summary["thresholds"]] == [
        ("tls_handshake_p99_ms", shakes["p99"], True), ("tls_connect_rate_max", max(per_second), True)]

    # User memory per TLS connection per side, as the timeline's worker rows say it, and as the
    # memory table says it (one figure: the table's).
    rows = {r["key"]: r for r in summary["memory"]["rows"]}
    for side in ("server", "client"):
        assert summary["mem_per_conn_bytes"][side] == pytest.approx(memory_per_connection(records, side))
        assert summary["mem_per_conn_bytes"][side] == rows[f"connscale_{side}_rss"]["opened"]
    # OpenSSL's state for one connection is kilobytes (a plain connection costs a few hundred bytes).
    assert summary["mem_per_conn_bytes"]["client"] > 4000 and summary["mem_per_conn_bytes"]["server"] > 4000

    # Held, and said so; saturated clients (TLS handshakes are CPU) named when they were.
    explanation = summary["explanation"]
    assert explanation["wall"] == "none" and explanation["headline"].startswith(f"held {TARGET:,} of {TARGET:,}")
    assert explanation["measuring_side_saturated"] == ("not the server's limit" in explanation["headline"]
                                                       or "clients keeping up" in explanation["headline"])
    assert all(i["wall"] == "measuring_side" for i in summary["incidents"])  # and no wall of TLS's

    # The verdict's tls: line, and the report's rows, say the same.
    assert f"tls: handshake p50={shakes['p50']} p99={shakes['p99']} ms ({TARGET} handshakes, 0 resumed)" in r.stdout
    report = (run_dir / "report.html").read_text()
    assert 'data-k="tls_handshake_p99"' in report and 'data-k="tls_mem_per_conn_client"' in report
    assert 'id="handshakes"' in report


def test_a_run_whose_clients_refuse_the_servers_certificate_names_tls_and_the_fix(tmp_path: Path) -> None:
    from tests.support.certs import Pki

    pki = Pki(tmp_path)
    cert, key = pki.issue("server", rogue=True)  # signed by a CA the clients are not given
    ports = free_ports(2)
    config = tmp_path / "run.yaml"
    config.write_text(f"""
server: {{ports: "{ports[0]}-{ports[1]}", tls: {{cert: "{cert}", key: "{key}"}}}}
client: {{server: "127.0.0.1:{ports[0]}-{ports[1]}", interval: 2, timeout: 5, tls: {{ca_file: "{pki.ca_file}"}}}}
control: {{listen: "tcp:{free_port()}:interface=127.0.0.1", console: none}}
scenario: {{target: 500, rate: 500, steps: 1, hold: 1, final_hold: 2, time_limit: 60}}
run: {{dir: runs}}
""")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    r = subprocess.run(connscale("run", "-c", str(config)), capture_output=True, text=True, timeout=120,
                       env=env, cwd=tmp_path)
    (summary_path,) = (tmp_path / "runs").glob("*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert r.returncode == 1 and summary["verdict"] == "failed", r.stdout + r.stderr
    assert set(summary["failures"]) <= {"connect:tls_unknown_ca", "server:connect:tls_cert_rejected"}
    assert summary["failures"]["connect:tls_unknown_ca"] > 0
    explanation = summary["explanation"]
    assert explanation["wall"] == "tls" and explanation["side"] == "client"
    assert "client.tls.ca_file" in " ".join(explanation["fix"]) and "Traceback" not in r.stdout + r.stderr
    assert "why: stopped at 0 of 500 connections: TLS handshakes fail" in r.stdout
