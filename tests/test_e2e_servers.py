"""`connscale run --url` against real servers: each held with 0 failures, each stopped at its own cap.

redis-server, nginx, mosquitto and autobahn's WebSocket server (tests/support/servers.py),
each started here on a loopback port with a config of this test's, stopped by pid. A run
against a server's cap must stop near it and name the cap and its fix; every explanation
is checked against the run's timeline (the cause it names is the one the clients counted,
and the count it stopped at is the timeline's peak). Small counts keep the suite fast;
bench/servers.py runs the same at full size (15,000-20,000 connections).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from connscale.metrics.timeline import read_timeline
from tests.support import servers
from tests.support.certs import Pki
from tests.support.procs import connscale, free_port

pytestmark = pytest.mark.slow

#: How a server that closes connections at its cap shows in the clients' counts.
CLOSED = tuple(f"{phase}:{cause}" for phase in ("connect", "first_ping", "steady")
               for cause in ("closed_by_peer", "ECONNRESET"))


def config(tmp: Path, target: int, **client: object) -> Path:
    control = free_port()
    extra = "".join(f"\n  {k}: {json.dumps(v)}" for k, v in client.items())
    path = tmp / "run.yaml"
    path.write_text(f"""
client:
  interval: 2
  timeout: 5
  workers: 1{extra}
control: {{listen: "tcp:{control}:interface=127.0.0.1", console: none}}
scenario: {{target: {target}, rate: 2000, steps: 2, hold: 1, final_hold: 3, time_limit: 60, max_failures: 0}}
run: {{dir: runs}}
""")
    return path


def run(tmp: Path, url: str, target: int, *extra: str, more: str = "",
        **client: object) -> tuple[subprocess.CompletedProcess[str], dict, list]:
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp / "xdg"))
    path = config(tmp, target, **client)
    path.write_text(path.read_text() + more)
    r = subprocess.run(connscale("run", "-c", str(path), "--url", url, *extra),
                       capture_output=True, text=True, timeout=150, env=env, cwd=tmp)
    found = list((tmp / "runs").glob("*/summary.json"))
    assert len(found) == 1, r.stdout + r.stderr
    summary = json.loads(found[0].read_text())
    records = list(read_timeline(found[0].parent / "timeline.jsonl"))
    assert (found[0].parent / "report.html").exists(), r.stdout
    return r, summary, records


def last_client(records: list) -> dict:
    """The clients' totals of the last second the agent reported (the very last may follow its exit)."""
    return [rec.client for rec in records if rec.client.opened or rec.client.failures][-1]


def held(r: subprocess.CompletedProcess[str], summary: dict, records: list, target: int) -> None:
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary["verdict"] == "held" and summary["held"] == target and summary["failures"] == {}
    assert summary["pongs"] > 0
    # No server of connscale's own: no server-side numbers claimed, no ghosts against a count of 0.
    assert summary["workers"]["server"] == 0 and summary["server_open_at_end"] is None
    assert summary["ghosts"] == 0 and all(rec.ghosts == 0 for rec in records)
    assert all(rec.own_server is False for rec in records)
    # The explanation against the timeline: held what the final hold's seconds held.
    finals = [rec for rec in records if rec.phase == "final_hold"]
    assert finals and all(rec.client.open == target for rec in finals)
    assert summary["explanation"]["wall"] == "none"
    assert summary["explanation"]["headline"].startswith(f"held {target:,} of {target:,}")


def stopped_at_cap(r: subprocess.CompletedProcess[str], summary: dict, records: list, causes: tuple[str, ...],
                   cap: int, words: tuple[str, ...]) -> dict:
    """The run failed at about `cap`, the timeline counted `cause`, the explanation names it."""
    assert r.returncode == 1, r.stdout + r.stderr
    explanation = summary["explanation"]
    assert explanation["wall"] == "server_cap", explanation
    # The timeline's peak (once a second, the hub's) and the run's (its own polls) may differ by
    # a few connections opened and closed between them; both are at the cap.
    peak = max(rec.client.open for rec in records)
    assert cap * 0.8 <= peak <= cap + 2, (peak, cap)  # a server may count its own listener in or out
    assert cap * 0.8 <= summary["peak_open"] <= cap + 2, (summary["peak_open"], peak)
    failures = last_client(records).failures
    assert any(failures.get(c, 0) > 0 for c in causes), failures
    assert f"stopped at {summary['peak_open']:,} of" in explanation["headline"]
    text = " ".join([explanation["headline"], *explanation["evidence"], *explanation["fix"]])
    for word in words:
        assert word in text, (word, explanation)
    assert "why: stopped at" in r.stdout and "fix: " in r.stdout
    return explanation


# -- redis -----------------------------------------------------------------------------------------

@pytest.mark.skipif(servers.missing("redis-server") is not None, reason=str(servers.missing("redis-server")))
def test_redis_held(tmp_path):
    with servers.redis(tmp_path) as server:
        r, summary, records = run(tmp_path, f"redis://127.0.0.1:{server.port}", 1000, "--observe", str(server.pid))
    held(r, summary, records, 1000)
    # Redis's own side, from the observer of its process: its memory per held connection.
    rows = {row["key"]: row for row in summary["memory"]["rows"]}
    assert rows["server_rss"]["side"] == "server" and rows["server_rss"]["pinging"] > 0


@pytest.mark.skipif(servers.missing("redis-server") is not None, reason=str(servers.missing("redis-server")))
def test_a_url_run_starts_no_observer_unless_told_which_process(tmp_path):
    with servers.redis(tmp_path) as server:
        r, summary, records = run(tmp_path, f"redis://127.0.0.1:{server.port}", 100)
    held(r, summary, records, 100)
    assert not (Path(summary["run_dir"]) / "observer.log").exists()


@pytest.mark.skipif(servers.missing("redis-server") is not None, reason=str(servers.missing("redis-server")))
def test_redis_at_maxclients_names_it_quoting_redis(tmp_path):
    with servers.redis(tmp_path, maxclients=300) as server:
        r, summary, records = run(tmp_path, f"redis://127.0.0.1:{server.port}", 800)
    explanation = stopped_at_cap(r, summary, records, ("connect:redis_maxclients",), 300,
                                 ("maxclients", "CONFIG SET maxclients", "LimitNOFILE"))
    # The server's own words, quoted, as the timeline kept them.
    assert last_client(records).said["redis_maxclients"] == "-ERR max number of clients reached"
    assert '"-ERR max number of clients reached"' in explanation["headline"]


# -- nginx -----------------------------------------------------------------------------------------

@pytest.mark.skipif(servers.missing("nginx") is not None, reason=str(servers.missing("nginx")))
def test_nginx_held(tmp_path):
    with servers.nginx(tmp_path, worker_connections=4096) as server:
        held(*run(tmp_path, f"http://127.0.0.1:{server.port}/health", 1000), 1000)


@pytest.mark.skipif(servers.missing("nginx") is not None, reason=str(servers.missing("nginx")))
def test_nginx_at_worker_connections_names_it(tmp_path):
    with servers.nginx(tmp_path, worker_connections=300) as server:
        r, summary, records = run(tmp_path, f"http://127.0.0.1:{server.port}/", 800)
    explanation = stopped_at_cap(r, summary, records, CLOSED, 300, ("worker_connections", "worker_rlimit_nofile"))
    assert "nginx" in explanation["headline"]


# -- mosquitto -------------------------------------------------------------------------------------

@pytest.mark.skipif(servers.missing("mosquitto") is not None, reason=str(servers.missing("mosquitto")))
def test_mosquitto_held(tmp_path):
    with servers.mosquitto(tmp_path) as server:
        held(*run(tmp_path, f"mqtt://127.0.0.1:{server.port}", 1000), 1000)


@pytest.mark.skipif(servers.missing("mosquitto") is not None, reason=str(servers.missing("mosquitto")))
def test_mosquitto_at_max_connections_names_it(tmp_path):
    with servers.mosquitto(tmp_path, max_connections=300) as server:
        r, summary, records = run(tmp_path, f"mqtt://127.0.0.1:{server.port}", 800)
    stopped_at_cap(r, summary, records, CLOSED, 300, ("max_connections", "mosquitto.conf"))


# -- WebSocket (autobahn) --------------------------------------------------------------------------

def test_websocket_server_held(tmp_path):
    with servers.ws_echo(tmp_path) as server:
        held(*run(tmp_path, f"ws://127.0.0.1:{server.port}/socket", 1000), 1000)


def test_websocket_server_at_its_cap_names_the_503(tmp_path):
    with servers.ws_echo(tmp_path, max_connections=300) as server:
        r, summary, records = run(tmp_path, f"ws://127.0.0.1:{server.port}/", 800)
    explanation = stopped_at_cap(r, summary, records, ("connect:http_503",), 300, ("503", "maxConnections"))
    assert last_client(records).said["http_503"].startswith("HTTP/1.1 503")
    assert '"HTTP/1.1 503' in explanation["headline"]


# -- the wrong server ------------------------------------------------------------------------------

def wrong_server(r: subprocess.CompletedProcess[str], summary: dict, records: list, headline: str,
                 protocol_errors: bool = True) -> dict:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    for log in Path(summary["run_dir"]).glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log
    explanation = summary["explanation"]
    assert explanation["wall"] == "protocol" and headline in explanation["headline"], explanation
    if protocol_errors:
        assert any(k.endswith(":protocol_error") for k in last_client(records).failures)
    return explanation


@pytest.mark.skipif(servers.missing("nginx") is not None, reason=str(servers.missing("nginx")))
def test_redis_spoken_to_an_http_server_is_named_with_its_answer(tmp_path):
    with servers.nginx(tmp_path, worker_connections=1024) as server:
        r, summary, records = run(tmp_path, f"redis://127.0.0.1:{server.port}", 50)
    explanation = wrong_server(r, summary, records, "does not speak redis")
    assert last_client(records).said["unexpected_reply"].startswith("HTTP/1.1 400")
    assert "HTTP/1.1 400" in " ".join(explanation["evidence"])


def test_plain_text_to_a_tls_server_is_named(tmp_path):
    with servers.tls_server(tmp_path) as server:
        r, summary, records = run(tmp_path, f"mqtt://127.0.0.1:{server.port}", 5)
    # OpenSSL closes on a plain-text first record without a word (no alert): named as such.
    explanation = wrong_server(r, summary, records, "it may expect TLS", protocol_errors=False)
    assert any("mqtts://" in fix for fix in explanation["fix"])


def test_a_server_sending_a_gigabyte_is_cut_off_with_bounded_memory(tmp_path):
    with servers.flood(tmp_path) as server:
        r, summary, records = run(tmp_path, f"http://127.0.0.1:{server.port}/", 20, max_reply=65536)
    explanation = wrong_server(r, summary, records, "does not speak http")
    assert set(last_client(records).protocol) == {"too_large"}  # replacements may have tried again
    assert "more than 65,536 bytes in one reply" in " ".join(explanation["evidence"])
    rss = [w.resources["rss_bytes"] for rec in records for a in rec.clients.values() for w in a.workers
           if w.resources.get("rss_bytes")]
    assert rss and max(rss) < 150 * 2**20, max(rss)  # a worker is ~25 MB; a gigabyte would show


# -- connscale's own server speaking WebSocket -----------------------------------------------------

def test_connscale_run_holds_websocket_connections_to_its_own_server(tmp_path):
    port = free_port()
    path = config(tmp_path, 1000, protocol="websocket")
    path.write_text(path.read_text() + f'server: {{framing: websocket, workers: 1, ports: "{port}"}}\n')
    r = subprocess.run(connscale("run", "-c", str(path)), capture_output=True, text=True, timeout=150,
                       env=dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg")), cwd=tmp_path)
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert r.returncode == 0, r.stdout + r.stderr
    assert summary["verdict"] == "held" and summary["failures"] == {} and summary["server_open_at_end"] == 1000
    records = list(read_timeline(Path(summary["run_dir"]) / "timeline.jsonl"))
    final = [rec for rec in records if rec.phase == "final_hold"]
    # Both sides counted the same pings: the server answered every ping frame itself.
    assert final and final[-1].server.pongs > 0 and final[-1].server.open == 1000
    assert final[-1].server.protocol == {}


# -- TLS through the profiles: a URL's TLS scheme is client.tls (net/tls), whatever the protocol ---

def tls_held(r: subprocess.CompletedProcess[str], summary: dict, records: list, target: int) -> None:
    held(r, summary, records, target)
    # Every connection made its TLS handshake (net/tls counted them), the profile's session after it.
    assert summary["tls"]["client"] is True and summary["handshake_ms"]["count"] >= target, summary["tls"]
    assert summary["handshake_ms"]["p50"] is not None


@pytest.mark.skipif(servers.missing("nginx") is not None, reason=str(servers.missing("nginx")))
@pytest.mark.parametrize("fast_path", [True, False])
def test_https_to_nginx_held_over_connscales_tls(tmp_path, fast_path):
    pki = Pki(tmp_path)
    cert, key = pki.issue("nginx", names=("localhost",))
    with servers.nginx(tmp_path, worker_connections=4096, tls=(cert, key)) as server:
        # https:// is client.tls on; the name the certificate is checked against (and SNI) is
        # client.tls.server_name, as the routes dial an address.
        r, summary, records = run(tmp_path, f"https://127.0.0.1:{server.port}/health", 300,
                                  more=f"net: {{fast_path: {str(fast_path).lower()}}}\n",
                                  tls={"ca_file": pki.ca_file, "server_name": "localhost"})
    tls_held(r, summary, records, 300)


@pytest.mark.skipif(servers.missing("nginx") is not None, reason=str(servers.missing("nginx")))
def test_https_to_a_certificate_for_another_name_is_refused_by_name(tmp_path):
    pki = Pki(tmp_path)
    cert, key = pki.issue("nginx", names=("other.test",))
    with servers.nginx(tmp_path, worker_connections=1024, tls=(cert, key)) as server:
        r, summary, records = run(tmp_path, f"https://127.0.0.1:{server.port}/", 20,
                                  tls={"ca_file": pki.ca_file, "server_name": "localhost"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert last_client(records).failures.get("connect:tls_hostname_mismatch", 0) > 0, last_client(records)
    assert summary["explanation"]["wall"] == "tls", summary["explanation"]


@pytest.mark.skipif(servers.redis_tls_missing() is not None, reason=str(servers.redis_tls_missing()))
def test_rediss_with_a_password_held_over_tls(tmp_path):
    pki = Pki(tmp_path)
    cert, key = pki.issue("redis", names=("localhost",))
    with servers.redis(tmp_path, password="s3cret-pw", tls=(cert, key)) as server:
        r, summary, records = run(tmp_path, f"rediss://:s3cret-pw@127.0.0.1:{server.port}", 200,
                                  tls={"ca_file": pki.ca_file, "server_name": "localhost"})
    # AUTH went through (a wrong or missing password is redis_noauth): it reached the workers.
    tls_held(r, summary, records, 200)
    assert "s3cret-pw" not in r.stdout + r.stderr


def test_wss_to_connscales_own_websocket_server_over_tls(tmp_path):
    port = free_port()
    path = config(tmp_path, 300, protocol="websocket", tls=True)
    # server.tls auto: the run makes a certificate and its clients trust it (client.tls.ca_file).
    path.write_text(path.read_text() + f'server: {{framing: websocket, workers: 1, ports: "{port}", tls: auto}}\n')
    r = subprocess.run(connscale("run", "-c", str(path)), capture_output=True, text=True, timeout=150,
                       env=dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg")), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert summary["verdict"] == "held" and summary["failures"] == {} and summary["server_open_at_end"] == 300
    assert summary["tls"]["server"] == "auto" and summary["tls"]["client"] is True
    assert summary["handshake_ms"]["count"] >= 300
    records = list(read_timeline(Path(summary["run_dir"]) / "timeline.jsonl"))
    final = [rec for rec in records if rec.phase == "final_hold"]
    # The server answered ping frames inside TLS: pongs counted on both sides, no violation.
    assert final and final[-1].server.pongs > 0 and final[-1].server.protocol == {}
