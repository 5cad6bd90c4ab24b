"""Reading the numbers report.html shows (each a span with its key) and checking them against the
timeline and summary.json: shared by the report and the report-browser tests."""

from __future__ import annotations

import re
from typing import Any

from hdrh.histogram import HdrHistogram


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
