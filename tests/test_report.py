"""The report: every number it shows is recomputed here from the timeline,
independently of the report's own code; the page needs nothing but itself."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hdrh.histogram import HdrHistogram

from connscale.diagnose.curve import CurvePoint, curve_points, find_knee
from connscale.diagnose.manifest import collect_manifest, redact
from connscale.diagnose.report import (
    ReportError,
    load_run,
    render_html,
    write_csv,
    write_report,
)
from tests.support.procs import connscale
from tests.support.timelines import make_records, make_stats, write_run

NUMBER = re.compile(r'<span class="n" data-k="([^"]+)">([^<]*)</span>')


def shown_numbers(page: str) -> dict[str, float]:
    out = {}
    for key, text in NUMBER.findall(page):
        assert key not in out or out[key] == float(text.replace(",", "")), f"{key} shown twice, differently"
        out[key] = float(text.replace(",", ""))
    return out


def decimals(page: str, key: str) -> int:
    text = dict(NUMBER.findall(page))[key]
    return len(text.split(".")[1]) if "." in text else 0


# ---------------------------------------------------------------- an independent reading of a timeline

def merged(records: list[dict[str, Any]]) -> HdrHistogram:
    h = HdrHistogram(1, 600_000_000, 2)
    for r in records:
        if r.get("rtt_hist"):
            h.decode_and_add(r["rtt_hist"])
    return h


def pct_ms(h: HdrHistogram) -> dict[str, float | None]:
    if not h.get_total_count():
        return {"p50": None, "p90": None, "p99": None, "max": None}
    return {"p50": h.get_value_at_percentile(50) / 1000, "p90": h.get_value_at_percentile(90) / 1000,
            "p99": h.get_value_at_percentile(99) / 1000, "max": h.get_max_value() / 1000}


def expected_numbers(records: list[dict[str, Any]], summary: dict[str, Any] | None) -> dict[str, float | None]:
    """What the page must say, from the records alone (plus the summary's verdict facts)."""
    live = [r for r in records if r.get("phase") != "stop"] or records
    last = live[-1]
    fails = lambda r: sum(r["client"]["failures"].values()) + sum(r["server"]["failures"].values())  # noqa: E731
    final = [r for r in records if r.get("phase") == "final_hold"]
    exp: dict[str, float | None] = {
        "target": summary["target"] if summary else max(sum(c["target"] for c in r["clients"].values()) for r in live),
        "peak_open": max(r["client"]["open"] for r in live),
        "final_hold_open": final[-1]["client"]["open"] if final else None,
        "final_hold_seconds": len(final),
        "open_at_end": last["client"]["open"],
        "server_open_at_end": last["server"]["open"],
        "ghosts_max": max(r["ghosts"] for r in live),
        "failures": fails(last),
        "pings": last["client"]["pings"],
        "pongs": last["client"]["pongs"],
        "duration_s": last["elapsed_s"],
        "workers_server": last["workers"]["server"],
        "workers_client": last["workers"]["client"],
        "connect_rate_max": max(
            (b["client"]["opened"] - a["client"]["opened"]) / (b["elapsed_s"] - a["elapsed_s"])
            for a, b in zip(live, live[1:])),
    }
    if summary and "held" in summary:
        exp["held"] = summary["held"]
    for st in (summary or {}).get("steps", []):  # the ramp as the run saw it
        for key in ("target", "seconds", "rate_asked", "rate_achieved"):
            exp[f"step.{st['step']}.{key}"] = st[key]
    holds = [r for r in records if str(r.get("phase", "")).split(":")[0] in ("hold", "final_hold")]
    for span, rs in (("final_hold", final), ("holds", holds)):
        for k, v in pct_ms(merged(rs)).items():
            exp[f"rtt_{span}_{k}"] = v
    for k, v in pct_ms(merged(live)).items():  # every second of the run, before it stopped
        exp[f"rtt_run_{k}"] = v
    # Per phase: seconds, open at its last second, failures during it, RTT of its seconds.
    order: list[str] = []
    for r in records:
        if r["phase"] not in order:
            order.append(r["phase"])
    previous = 0
    fails_in: dict[str, int] = {}
    for r in records:
        fails_in[r["phase"]] = fails_in.get(r["phase"], 0) + fails(r) - previous
        previous = fails(r)
    for phase in order:
        rs = [r for r in records if r["phase"] == phase]
        h = merged(rs)
        p = pct_ms(h)
        name = phase or "(none)"  # seconds before anyone named a phase
        exp.update({f"phase.{name}.seconds": len(rs), f"phase.{name}.open": rs[-1]["client"]["open"],
                    f"phase.{name}.failures": fails_in[phase], f"phase.{name}.samples": h.get_total_count(),
                    f"phase.{name}.p50": p["p50"], f"phase.{name}.p99": p["p99"], f"phase.{name}.max": p["max"]})
    # Resources per side: CPU from cumulative seconds, RSS growth over each worker's first sample.
    def side_workers(r: dict[str, Any], side: str) -> list[dict[str, Any]]:
        if side == "server":
            return r["server_workers"]
        return [w for c in r["clients"].values() for w in c["workers"]]

    peak = max(range(len(live)), key=lambda i: (live[i]["client"]["open"], -i))
    for side in ("server", "client"):
        cpu = []
        for a, b in zip(live, live[1:]):
            dt = b["elapsed_s"] - a["elapsed_s"]
            # A worker not yet (or no longer) reporting has no resources that second.
            sa = {(w["index"], w["pid"]): w["resources"] for w in side_workers(a, side) if w["resources"]}
            cpu.append(sum((w["resources"]["cpu_user_s"] + w["resources"]["cpu_system_s"]
                            - sa[(w["index"], w["pid"])]["cpu_user_s"] - sa[(w["index"], w["pid"])]["cpu_system_s"])
                           / dt * 100 for w in side_workers(b, side)
                           if w["resources"] and (w["index"], w["pid"]) in sa))
        exp[f"cpu_max_{side}"] = max(cpu)
        first: dict[tuple[int, int], tuple[float, int]] = {}  # a worker's RSS and open count when first seen
        for r in records:
            for w in side_workers(r, side):
                if w["resources"]:
                    first.setdefault((w["index"], w["pid"]), (w["resources"]["rss_bytes"], w["open"]))
        at_peak = [w for w in side_workers(live[peak], side) if w["resources"]]
        exp[f"rss_{side}"] = sum(w["resources"]["rss_bytes"] for w in at_peak)
        grown = sum(w["resources"]["rss_bytes"] - first[(w["index"], w["pid"])][0] for w in at_peak)
        added = sum(w["open"] - first[(w["index"], w["pid"])][1] for w in at_peak)
        exp[f"mem_per_conn_{side}"] = grown / added if added > 0 else None
    # connscale's own cost over the final hold: the summary's (with the run itself), else the
    # mean of the hold's lines' cores (its first line has no rate yet) and their largest RSS.
    cost = (summary or {}).get("cost_final_hold")
    costs = [r["cost"] for r in final if r.get("cost")]
    if cost is None and costs:
        costs = costs[1:] or costs
        cost = {"cores": sum(c["cores"] for c in costs) / len(costs), "rss_bytes": max(c["rss_bytes"] for c in costs),
                "processes": max(c["processes"] for c in costs)}
    if cost is not None:
        exp.update({"own_cores": cost["cores"], "own_rss": cost["rss_bytes"], "own_processes": cost["processes"]})
    exp.update(expected_curve(records))
    return exp


def expected_curve(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """The scaling sentence: one point per hold (its lowest open count, p99 of its seconds), else
    count bins; the knee is the first point from which every later p99 leaves the low-load band."""
    from connscale.diagnose.curve import KNEE_FACTOR, KNEE_MIN_MS

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if str(r.get("phase", "")).split(":")[0] in ("hold", "final_hold", "plateau"):
            groups.setdefault(r["phase"], []).append(r)
    points = [(min(r["client"]["open"] for r in rs), pct_ms(merged(rs))["p99"]) for rs in groups.values()
              if merged(rs).get_total_count()]
    if len(points) < 2:
        with_rtt = [r for r in records if r.get("rtt_hist") and r["client"]["open"] > 0]
        width = max(1, -(-max((r["client"]["open"] for r in with_rtt), default=1) // 12))
        bins: dict[int, list[dict[str, Any]]] = {}
        for r in with_rtt:
            bins.setdefault(min(11, (r["client"]["open"] - 1) // width), []).append(r)
        points = [((b + 1) * width, pct_ms(merged(rs))["p99"]) for b, rs in bins.items()]
    points.sort()
    for i in range(1, len(points)):
        base = min(p for _, p in points[:i])
        if all(p > max(base * KNEE_FACTOR, base + KNEE_MIN_MS) for _, p in points[i:]):
            return {"knee.open": points[i][0], "knee.before_open": points[i - 1][0],
                    "knee.baseline_p99": base, "knee.p99": points[i][1]}
    return {"curve.first_open": points[0][0], "curve.last_open": points[-1][0]} if len(points) >= 2 else {}


def optional_numbers(records: list[dict[str, Any]], summary: dict[str, Any] | None) -> dict[str, float]:
    """Numbers a page shows only in some verdicts: failure counts by cause."""
    failures = (summary or {}).get("failures")
    if not failures:
        live = [r for r in records if r.get("phase") != "stop"] or records
        last = live[-1]
        failures = dict(last["client"]["failures"])
        failures.update({f"server:{k}": v for k, v in last["server"]["failures"].items()})
    return {**{f"failures.{k}": v for k, v in failures.items()}, **memory_numbers(records)}


def memory_numbers(records: list[dict[str, Any]]) -> dict[str, float]:
    """The memory table (only with an observer's rows): growth per connection opened from the last
    second before the first connection to the first second at the peak and the last of the final hold."""
    def target(r: dict[str, Any]) -> dict[str, Any] | None:
        for o in (r.get("observers") or {}).values():
            if o.get("targets"):
                return {"target": o["targets"][0], "host": o.get("host") or {}}
        return None

    def levels(r: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        seen = target(r)
        if seen and seen["target"]["alive"] and seen["target"]["processes"]:
            procs = seen["target"]["processes"]
            out["server_rss"] = sum(p["rss"] for p in procs)
            if any(p.get("pss") is not None for p in procs):
                out["server_pss"] = sum(p["pss"] for p in procs if p.get("pss") is not None)
        if seen:
            h = seen["host"]
            if h.get("socket_slab") is not None:
                out["kernel_slab"] = sum(h["socket_slab"].values())
            if h.get("tcp_mem_pages") is not None:
                out["kernel_tcp_mem"] = h["tcp_mem_pages"] * h["page_size"]
            if "kernel_slab" in out and "kernel_tcp_mem" in out:
                out["kernel"] = out["kernel_slab"] + out["kernel_tcp_mem"]
        server = [w for w in r.get("server_workers") or [] if w.get("alive", True)]
        if server:
            out["connscale_server_rss"] = sum(w["resources"].get("rss_bytes", 0) for w in server)
        clients = [w for a in r["clients"].values() if a.get("connected", True) for w in a.get("workers") or []
                   if w.get("alive", True)]
        if clients:
            out["connscale_client_rss"] = sum(w["resources"].get("rss_bytes", 0) for w in clients)
        return out

    base = None
    for i, r in enumerate(records):
        if r["client"]["open"] > 0:
            break
        if target(r):
            base = i
    live = [i for i, r in enumerate(records) if r.get("phase") != "stop"]
    if base is None or not live:
        return {}
    peak = max(records[i]["client"]["open"] for i in live)
    final = [i for i in live if records[i].get("phase") == "final_hold"]
    moments = {"opened": next(i for i in live if records[i]["client"]["open"] >= peak),
               "pinging": final[-1] if final else live[-1]}
    out = {}
    for name, i in moments.items():
        added = records[i]["client"]["open"] - records[base]["client"]["open"]
        before, after = levels(records[base]), levels(records[i])
        for key in after.keys() & before.keys():
            if added > 0:
                out[f"memory.{key}.{name}"] = (after[key] - before[key]) / added
    return out


def check_numbers(page: str, records: list[dict[str, Any]], summary: dict[str, Any] | None) -> int:
    shown = shown_numbers(page)
    expected = expected_numbers(records, summary)
    optional = optional_numbers(records, summary)
    assert shown, "no tagged numbers in the page"
    for key, value in shown.items():
        if key in optional:
            tolerance = 0.5 * 10 ** -decimals(page, key) + 1e-9
            assert abs(value - optional[key]) <= tolerance, f"{key}: page {value} != {optional[key]}"
            continue
        assert key in expected, f"the page shows {key} = {value}, which this test does not know how to check"
        assert expected[key] is not None, f"{key}: page shows {value}, timeline has none"
        tolerance = 0.5 * 10 ** -decimals(page, key) + 1e-9
        assert abs(value - float(expected[key])) <= tolerance, f"{key}: page {value} != timeline {expected[key]}"
    # And nothing the timeline has is missing from the page.
    missing = [k for k, v in expected.items() if v is not None and k not in shown]
    assert not missing, missing
    return len(shown)


# ---------------------------------------------------------------- tests

def test_every_number_on_a_held_run_equals_the_timeline(tmp_path: Path) -> None:
    records = make_records()
    summary = {"verdict": "held", "reason": "", "target": 6000, "held": 6000,
               "steps": [{"step": 1, "target": 2000, "started": 1.0, "seconds": 2.012, "rate_asked": 2000.0,
                          "rate_achieved": 994.0},
                         {"step": 2, "target": 4000, "started": 7.0, "seconds": None, "rate_asked": 2000.0,
                          "rate_achieved": None}]}
    run_dir = write_run(tmp_path / "run", records, summary)
    path = write_report(run_dir)
    page = path.read_text()
    assert path == run_dir / "report.html"
    assert check_numbers(page, records, summary) > 40
    assert 'class="badge held">HELD' in page
    verdict = page.split('id="verdict">')[1].split("</section>")[0]
    assert "Held" in verdict and 'data-k="rtt_final_hold_p99"' in verdict


def test_failed_run_explains_the_top_cause_with_its_fix(tmp_path: Path) -> None:
    records = make_records(fail_at_step=2)
    summary = {"verdict": "failed", "reason": "failures exceeded scenario.max_failures=0: connect:EADDRNOTAVAIL=40",
               "target": 6000, "held": 0, "failures": {"connect:EADDRNOTAVAIL": 40}}
    page = write_report(write_run(tmp_path / "run", records, summary)).read_text()
    check_numbers(page, records, summary)
    verdict = page.split('id="verdict">')[1].split("</section>")[0]
    assert "Stopped at" in verdict and "failures exceeded scenario.max_failures=0" in verdict
    assert "EADDRNOTAVAIL" in verdict and "ip_local_port_range" in verdict  # the advice, with its fix
    assert shown_numbers(verdict)["failures.connect:EADDRNOTAVAIL"] == 40


def test_the_walls_explanation_and_incidents_are_shown_when_the_summary_has_them(tmp_path: Path) -> None:
    records = make_records(fail_at_step=2)
    summary = {"verdict": "failed", "reason": "step 2 fell behind", "target": 6000, "held": 0,
               "explanation": {"headline": "The clients ran out of ephemeral ports <at> 127.0.0.2",
                               "wall": "ephemeral_ports", "side": "client",
                               "evidence": ["40 x connect:EADDRNOTAVAIL"],
                               "fix": ["add --source-ip 127.0.0.3-127.0.0.9"], "measuring_side_saturated": False},
               "incidents": [{"t": 1.0, "elapsed_s": 9.0, "trigger": "failures", "wall": "ephemeral_ports",
                              "headline": "EADDRNOTAVAIL on connect", "evidence": ["40 failures in 1 s"],
                              "fix": ["add source IPs"], "open": 3960, "kernel": {"tcp_inuse": 7000}}]}
    page = write_report(write_run(tmp_path / "run", records, summary)).read_text()
    verdict = page.split('id="verdict">')[1].split("</section>")[0]
    assert "ran out of ephemeral ports &lt;at&gt; 127.0.0.2" in verdict  # escaped
    assert "ephemeral_ports" in verdict and "<li>40 x connect:EADDRNOTAVAIL</li>" in verdict
    assert "<li>add --source-ip 127.0.0.3-127.0.0.9</li>" in verdict
    incidents = page.split("<h2>Incidents</h2>")[1].split("</table>")[0]
    assert "EADDRNOTAVAIL on connect" in incidents and "<li>add source IPs</li>" in incidents
    assert "9 s" in incidents and "tcp_inuse" in incidents
    # Without a summary, incidents recorded on timeline lines are shown all the same.
    records[9]["incidents"] = [{"elapsed_s": 10.0, "trigger": "ghosts", "wall": "accept_queue", "headline": "ghosts"}]
    page = write_report(write_run(tmp_path / "bare", records, None)).read_text()
    assert "accept_queue" in page.split("<h2>Incidents</h2>")[1]


def test_report_needs_only_the_run_directory_and_nothing_from_the_network(tmp_path: Path) -> None:
    records = make_records()
    run_dir = write_run(tmp_path / "run", records, summary=None, manifest=False)
    page = render_html(load_run(run_dir))
    check_numbers(page, records, None)
    assert "NO VERDICT" in page and "no <code>summary.json</code>" in page
    assert "No manifest.json" in page
    for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attr.startswith("data:image/png;base64,"), attr
    assert "@import" not in page and "url(" not in page
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 8
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")


def test_manifest_lists_limits_and_hides_secrets(tmp_path: Path) -> None:
    root = tmp_path / "sys"
    for name, value in {"fs/file-max": "9223372036854775807", "fs/nr_open": "1048576",
                        "net/ipv4/ip_local_port_range": "32768\t60999", "net/core/somaxconn": "4096",
                        "net/ipv4/tcp_mem": "1 2 3"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(value + "\n")
    config = {"control": {"secret": "<redacted>", "secret_file": "/etc/s"},
              "clients": {"c1": {"env": {"API_TOKEN": "hunter2", "LANG": "C"}}}}
    m = collect_manifest(config, root=str(root))
    assert m["sysctls"]["net.ipv4.ip_local_port_range"] == [32768, 60999]
    assert m["sysctls"]["net.ipv4.tcp_mem"] == [1, 2, 3]
    assert m["sysctls"]["net.core.somaxconn"] == 4096
    assert m["sysctls"]["net.netfilter.nf_conntrack_max"] == "not loaded"
    assert m["sysctls"]["net.ipv4.tcp_tw_reuse"] is None  # unreadable here, not invented
    assert m["rlimits"]["nofile"]["hard"] >= m["rlimits"]["nofile"]["soft"]
    assert m["host"]["cores"] >= 1 and m["host"]["ram_bytes"] > 0 and m["host"]["kernel"].startswith("Linux")
    assert m["versions"]["connscale"] and m["versions"]["python"]
    assert m["config"]["clients"]["c1"]["env"] == {"API_TOKEN": "<redacted>", "LANG": "C"}
    assert m["config"]["control"]["secret_file"] == "/etc/s"
    assert "hunter2" not in json.dumps(m)
    assert redact({"password": None}) == {"password": None}


def test_a_fleet_runs_report_shows_each_agents_host_manifest(tmp_path: Path) -> None:
    summary = {"verdict": "held", "reason": "", "target": 6000, "held": 6000,
               "manifests": {"hub": "manifest.json", "h2": "manifest-h2.json", "h3": "manifest-h3.json"}}
    run_dir = write_run(tmp_path / "run", make_records(), summary)
    agent_host = json.loads((run_dir / "manifest.json").read_text())
    agent_host["host"]["hostname"] = "agent-host-h2"
    (run_dir / "manifest-h2.json").write_text(json.dumps(agent_host))
    page = write_report(run_dir).read_text()
    h2 = page.split("<h2>Manifest of agent h2</h2>")[1]
    assert "agent-host-h2" in h2.split("<h2>")[0]
    # One host's manifest lost is said there; the page still renders.
    assert "<h3>h3</h3><p class=\"muted\">manifest-h3.json is missing or unreadable.</p>" in page


def test_knee_is_where_p99_leaves_the_low_load_band() -> None:
    flat = [CurvePoint(n, "", 1.0, 2.0 + (n % 3) * 0.3, 10) for n in (1000, 2000, 3000, 4000)]
    assert find_knee(flat) is None
    bent = flat[:2] + [CurvePoint(3000, "", 5.0, 40.0, 10), CurvePoint(4000, "", 9.0, 90.0, 10)]
    knee = find_knee(bent)
    assert knee is not None and knee.open == 3000 and knee.before_open == 2000 and knee.p99 == 40.0
    # A loopback wobble (0.3 -> 0.9 ms) is no knee: the rise must also exceed KNEE_MIN_MS.
    assert find_knee([CurvePoint(1, "", 0.1, 0.3, 1), CurvePoint(2, "", 0.1, 0.9, 1)]) is None
    # Nor is one noisy plateau the next one contradicts (a busy box): the rise must last.
    noisy = flat[:3] + [CurvePoint(4000, "", 2.0, 12.0, 10), CurvePoint(5000, "", 1.5, 2.5, 10)]
    assert find_knee(noisy) is None
    assert find_knee(noisy + [CurvePoint(6000, "", 5.0, 30.0, 10)]).open == 6000


def test_scaling_curve_has_one_point_per_plateau_and_finds_the_knee() -> None:
    points = curve_points(make_stats(steps=4, knee_at_step=3))
    assert [p.label for p in points] == ["hold:1", "hold:2", "hold:3", "final_hold"]
    assert [p.open for p in points] == [2000, 4000, 6000, 8000]
    knee = find_knee(points)
    assert knee is not None and knee.open == 6000


def test_the_knee_sentence_says_the_timelines_numbers(tmp_path: Path) -> None:
    records = make_records(steps=4, knee_at_step=3)
    summary = {"verdict": "held", "reason": "", "target": 8000, "held": 8000}
    page = write_report(write_run(tmp_path / "run", records, summary)).read_text()
    check_numbers(page, records, summary)
    shown = shown_numbers(page)
    assert shown["knee.open"] == 6000 and shown["knee.before_open"] == 4000
    assert "that is the knee of the curve" in page


def test_csv_has_per_second_percentiles_recomputed_from_the_histograms(tmp_path: Path) -> None:
    records = make_records()
    run_dir = write_run(tmp_path / "run", records)
    path = write_csv(run_dir)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == len(records)
    for row, r in zip(rows, records):
        assert row["phase"] == r["phase"] and int(row["open"]) == r["client"]["open"]
        if r["rtt_hist"]:
            h = merged([r])
            assert int(row["rtt_count"]) == h.get_total_count()
            assert float(row["rtt_p50_ms"]) == pytest.approx(r["rtt_window_ms"]["p50"], abs=0.0005)
            assert float(row["rtt_p99_ms"]) == pytest.approx(r["rtt_window_ms"]["p99"], abs=0.0005)
            assert float(row["rtt_p99_9_ms"]) == pytest.approx(h.get_value_at_percentile(99.9) / 1000, abs=0.0005)
        else:
            assert row["rtt_p50_ms"] == "" and row["rtt_count"] == "0"


def test_connscale_report_command(tmp_path: Path) -> None:
    run_dir = write_run(tmp_path / "run", make_records())
    r = subprocess.run(connscale("report", str(run_dir), "--csv"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (run_dir / "report.html").exists() and (run_dir / "rtt_per_second.csv").exists()
    assert str(run_dir / "report.html") in r.stdout
    bad = subprocess.run(connscale("report", str(tmp_path / "nope")), capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "no such run directory" in bad.stderr


def test_report_of_an_empty_or_missing_timeline_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no timeline.jsonl"):
        load_run(tmp_path)
    (tmp_path / "timeline.jsonl").write_text("")
    page = render_html(load_run(tmp_path))  # an empty run still renders (a hub that died at once)
    assert "0 seconds recorded" in page


def test_hubs_workers_and_the_cli_start_without_matplotlib_rich_or_prometheus() -> None:
    import sys

    code = ("import sys, connscale.control.hub, connscale.procs.worker, connscale.app.cli, connscale.app.run, "
            "connscale.control.agent; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'matplotlib', 'rich', 'prometheus_client'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
