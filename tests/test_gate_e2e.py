"""Issue 16 done-when: two real runs that differ in one known way, then compare, --baseline,
thresholds and JUnit, and the compare page in a browser with every number checked.

Each run is a real `connscale run` (a search for the capacity, small counts) inside its own
network namespace, so each has its own loopback and its own sysctls: host A has the wide
ephemeral port range (10000-65000), host B `net.ipv4.ip_local_port_range = 40000 40399`,
400 ports per route. With one source IP and two server ports, B's routes hold 800
connections, A's the search's upper bound of 1,500: B's capacity is lower, and the one
setting that changed is in both manifests. Everything is read back here as plain JSON,
independently of the package's readers.
"""

from __future__ import annotations

import html.parser
import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import screenshot
from tests.support.netns import TestNetwork, netns_available
from tests.support.procs import connscale

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not netns_available(), reason="needs root + ip netns")]

NARROW = "40000 40399"
#: Where the last screenshot is kept for a person to look at (the test's tmp dir goes away).
SHOT_COPY = Path(os.environ.get("CONNSCALE_COMPARE_SHOT", "/tmp/connscale-compare-test.png"))
#: Which way each metric is better: the issue's sense, written here apart from the registry.
HIGHER = {"held", "peak_open", "search.capacity", "ramp_rate", "connect_rate_max"}


def config(path: Path) -> Path:
    # Inside a namespace every port is free: both runs use the same file, so the
    # configuration is not what differs.
    path.write_text("""
server: {ports: "9100-9101", status_interval: 1}
client: {server: "127.0.0.1:9100-9101", source_ips: "127.0.0.2", interval: 1, timeout: 5}
control: {listen: "tcp:9200:interface=127.0.0.1", console: none}
scenario: {target: 1500, rate: 3000, mode: search, search_start: 500, search_plateau: 2, search_resolution: 0.1,
           slo_p99_ms: 2000, slo_timeout_rate: 0.05, time_limit: 90,
           thresholds: ["search.capacity >= 500", "failures == 0"]}
run: {dir: runs}
""")
    return path


def run_in(host: Any, cwd: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    before = set((cwd / "runs").glob("*")) if (cwd / "runs").exists() else set()
    env = dict(os.environ, XDG_CONFIG_HOME=str(cwd / "xdg"))
    r = host.run(connscale("run", *args), capture_output=True, text=True, timeout=150, env=env, cwd=cwd)
    (run_dir,) = set((cwd / "runs").glob("*")) - before
    return r, run_dir


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cwd = tmp_path_factory.mktemp("gate")
    cfg = config(cwd / "search.yaml")
    with TestNetwork(2) as net:
        wide, narrow = net.hosts
        sysctl = narrow.run(["sysctl", "-w", f"net.ipv4.ip_local_port_range={NARROW}"], capture_output=True,
                            text=True)
        assert sysctl.returncode == 0, sysctl.stderr
        a, a_dir = run_in(wide, cwd, "-c", str(cfg), "--junit", str(cwd / "a.xml"))
        # B against A: a tolerance tighter than the difference; one threshold of its own that fails.
        b, b_dir = run_in(narrow, cwd, "-c", str(cfg), "--baseline", str(a_dir), "--tolerance", "10%",
                          "--threshold", "search.capacity >= 1000", "--junit", str(cwd / "b.xml"))
    return {"cwd": cwd, "a": a, "b": b, "a_dir": a_dir, "b_dir": b_dir}


def summary_of(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


def test_the_narrow_host_holds_less_and_its_run_says_why(two_runs: dict[str, Any]) -> None:
    a, b = two_runs["a"], two_runs["b"]
    sa, sb = summary_of(two_runs["a_dir"]), summary_of(two_runs["b_dir"])
    assert a.returncode == 0, a.stdout + a.stderr
    assert sa["search"]["knee"] == 1500 and sa["metrics"]["search.capacity"] == 1500
    assert 500 <= sb["search"]["knee"] < 800, sb["search"]        # B's routes hold 800
    # The capacity line, in the summary and on stdout, names the step above the knee and why it failed.
    capacity = sb["search"]["capacity"]
    assert capacity.startswith(f"largest count meeting the SLO: {sb['search']['knee']:,} (the next step, ")
    assert "failed on routes = 800)" in capacity and f"capacity: {capacity}" in b.stdout
    # B's thresholds: the config's two pass, its own fails; the baseline's capacity regressed.
    assert [(t["expression"], t["passed"]) for t in sb["thresholds"]] == [
        ("search.capacity >= 500", True), ("failures == 0", True), ("search.capacity >= 1000", False)]
    assert all(t["passed"] for t in sa["thresholds"]) and sa["baseline"] is None
    assert b.returncode == 1, b.stdout + b.stderr
    pct = (sb["search"]["knee"] - 1500) / 1500 * 100
    assert (f"baseline FAIL search.capacity: {sb['search']['knee']:,} against 1,500: {abs(pct):.1f}% worse "
            "(tolerance 10%, higher is better)") in b.stdout
    assert f"threshold FAIL search.capacity >= 1000: measured {sb['search']['knee']:,} (limit >= 1,000)" in b.stdout
    changed = f"changed since the baseline: sysctls.net.ipv4.ip_local_port_range: 10000 65000 -> {NARROW}"
    assert changed in b.stdout
    assert [line for line in b.stdout.splitlines() if line.startswith("changed since")] == [changed], b.stdout
    assert "gate: FAILED (1 of 3 thresholds failed;" in b.stdout and "gate: PASSED" in a.stdout


def test_the_junit_files_count_the_failures(two_runs: dict[str, Any]) -> None:
    cwd = two_runs["cwd"]
    sb = summary_of(two_runs["b_dir"])
    a_suite = ET.parse(cwd / "a.xml").getroot().find("testsuite")
    assert a_suite.get("tests") == "3" and a_suite.get("failures") == "0"   # the verdict and two thresholds
    suite = ET.parse(cwd / "b.xml").getroot().find("testsuite")
    cases = suite.findall("testcase")
    checks = sb["baseline"]["checks"]
    assert len(cases) == 1 + 3 + len(checks) == int(suite.get("tests"))
    # Each comparison recomputed here from the two summaries' metrics and the tolerance.
    sa = summary_of(two_runs["a_dir"])
    regressed = []
    for c in checks:
        now, base = sb["metrics"].get(c["metric"]), sa["metrics"].get(c["metric"])
        if now is None or base is None:
            assert c["outcome"] == "skipped"
            continue
        higher = c["metric"] in HIGHER
        worse = now < base * 0.9 if higher else (now > base * 1.1 if base > 0 else now > base)
        assert c["outcome"] == ("regressed" if worse else "pass"), c
        if worse:
            regressed.append(c["metric"])
    assert {"search.capacity", "held"} <= set(regressed)
    failed = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failed == ["search.capacity >= 1000"] + [f"{m} vs {two_runs['a_dir']}" for m in regressed]
    assert suite.get("failures") == str(len(failed))
    message = next(c for c in cases if c.get("name") == f"search.capacity vs {two_runs['a_dir']}").find("failure")
    assert f"sysctls.net.ipv4.ip_local_port_range: 10000 65000 -> {NARROW}" in message.text


def test_compare_shows_the_difference_its_direction_and_the_setting(two_runs: dict[str, Any]) -> None:
    a_dir, b_dir, cwd = two_runs["a_dir"], two_runs["b_dir"], two_runs["cwd"]
    r = subprocess.run(connscale("compare", str(a_dir), str(b_dir), "-o", str(cwd / "compare.html")),
                       capture_output=True, text=True, timeout=120, cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    capacity = next(line for line in r.stdout.splitlines() if line.startswith("search.capacity "))
    knee = summary_of(b_dir)["search"]["knee"]
    assert capacity.split() == ["search.capacity", "higher", "1,500", f"{knee:,}",
                                f"{(knee - 1500) / 1500 * 100:+.1f}%", "worse"]
    assert re.search(rf"sysctls\.net\.ipv4\.ip_local_port_range\s+10000 65000\s+{NARROW}", r.stdout), r.stdout
    j = subprocess.run(connscale("compare", str(a_dir), str(b_dir), "--json", "-o", str(cwd / "again.html")),
                       capture_output=True, text=True, timeout=120, cwd=cwd)
    data = json.loads(j.stdout)
    row = next(m for m in data["metrics"] if m["metric"] == "search.capacity")
    assert row["values"] == [1500, knee] and row["direction"] == ["", "worse"]
    assert [d["key"] for d in data["manifest"]] == ["sysctls.net.ipv4.ip_local_port_range"]
    # `connscale runs`: both, newest first, with their capacity and gates.
    listing = subprocess.run(connscale("runs", str(cwd / "runs")), capture_output=True, text=True, timeout=60)
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    assert [row[2] for row in rows] == [b_dir.name, a_dir.name]
    # (when is a date and a time: the capacity is the 8th word, the gate the last)
    assert (rows[0][7], rows[0][-1]) == (f"{knee:,}", "FAILED") and (rows[1][7], rows[1][-1]) == ("1,500", "passed")


class _Texts(html.parser.HTMLParser):
    """Every text of a page with the data-k of the element it sits in (None: untagged)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.tagged: dict[str, str] = {}
        self.untagged: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("img", "meta", "br", "link", "input"):
            self.stack.append((tag, dict(attrs).get("data-k")))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        inside = [k for _, k in self.stack if k]
        tags = {t for t, _ in self.stack}
        if inside:
            self.tagged[inside[-1]] = self.tagged.get(inside[-1], "") + data
        elif not tags & {"style", "title"}:
            self.untagged.append(data)


def flat(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for k, v in data.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list) and all(isinstance(v, (str, int, float)) for v in data):
        return {prefix: " ".join(str(v) for v in data)}
    return {prefix: data if isinstance(data, str) else json.dumps(data, sort_keys=True)}


def check_page(page: str, dirs: list[Path]) -> int:
    """Every number on the compare page, against the runs' own summary.json and manifest.json."""
    parser = _Texts()
    parser.feed(page)
    summaries = [summary_of(d) for d in dirs]
    manifests = [flat(json.loads((d / "manifest.json").read_text())) for d in dirs]
    for m in manifests:
        for key in ("written", "host.ram_available_bytes", "config.run.dir"):
            m.pop(key, None)
        for key in [k for k in m if k.startswith("argv")]:
            m.pop(key)
    checked = 0
    for key, text in parser.tagged.items():
        kind, _, rest = key.partition(".")
        if kind == "m":
            metric, i = rest.rsplit(".", 1)
            value = summaries[int(i)]["metrics"][metric]
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert abs(float(text.replace(",", "")) - value) <= 0.5 * 10 ** -decimals + 1e-9, (key, text, value)
        elif kind == "c":
            metric, i = rest.rsplit(".", 1)
            value, ref = summaries[int(i)]["metrics"][metric], summaries[0]["metrics"][metric]
            if value == ref:
                assert text == "same", (key, text)
            else:
                better = (value > ref) == (metric in HIGHER)
                word = "better" if better else "worse"
                if ref == 0:
                    assert text == f"from 0, {word}", (key, text)
                else:
                    pct = float(text.split("%")[0])
                    assert abs(pct - (value - ref) / abs(ref) * 100) <= 0.05 + 1e-9, (key, text)
                    assert text.endswith(word), (key, text)
        elif kind == "run":
            i, field = rest.split(".", 1)
            s, d = summaries[int(i)], dirs[int(i)]
            expected = {
                "name": d.name, "dir": str(d), "target": f"{s['target']:,}",
                "duration_s": f"{s['duration_s']:.1f}", "capacity": (s.get("search") or {}).get("capacity"),
                "headline": s["explanation"]["headline"],
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["phases"][0]["start"])),
            }
            assert text == expected[field], (key, text, expected[field])
        elif kind == "inc":
            i, k, field = rest.split(".")
            incident = summaries[int(i)]["incidents"][int(k)]
            assert text == (f"{incident['elapsed_s']:.0f} s" if field == "t" else incident[field]), (key, text)
        elif kind == "h":
            setting, i = rest.rsplit(".", 1)
            assert text == manifests[int(i)][setting], (key, text)
            assert len({m.get(setting) for m in manifests}) > 1, f"{setting} is the same in every run"
        elif key == "same_settings":
            every = set().union(*manifests)
            differ = {k for k in every if len({m.get(k) for m in manifests}) > 1}
            assert int(text) == len(every) - len(differ), (text, len(every), len(differ))
        else:
            raise AssertionError(f"the page shows {key} = {text!r}, which this test does not know how to check")
        checked += 1
    # Every number is one of those: none stands untagged (metric names like hold_p99_ms are no numbers).
    loose = [t.strip() for t in parser.untagged if re.search(r"(?<![\w.])\d", t)]
    assert not loose, loose
    # And each run's every metric is on the page.
    for i, s in enumerate(summaries):
        assert {f"m.{m}.{i}" for m in s["metrics"]} <= set(parser.tagged), i
    return checked


def test_the_compare_page_in_a_browser_shows_the_runs_own_numbers(two_runs: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    page = two_runs["cwd"] / "compare.html"
    if not page.exists():
        subprocess.run(connscale("compare", str(two_runs["a_dir"]), str(two_runs["b_dir"]), "-o", str(page)),
                       capture_output=True, timeout=120, check=True)
    text = page.read_text()
    assert check_page(text, [two_runs["a_dir"], two_runs["b_dir"]]) > 30
    assert 'class="change worse"><span data-k="c.search.capacity.1">' in text
    assert "http://" not in text and "https://" not in text   # nothing from the network
    shot = screenshot(page, tmp_path / "compare.png", width=1600, height=2400)
    shutil.copyfile(shot, SHOT_COPY)
    image = Image.open(shot).convert("RGB")
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 500, "the page looks blank"
    # The runs' own colours (A blue, B orange) are drawn in the plots, and the worse change is red.
    def count(rgb: tuple[int, int, int]) -> int:
        return sum(n for n, c in colors if all(abs(x - y) <= 6 for x, y in zip(c, rgb)))
    assert count((0x1F, 0x6F, 0xB4)) > 500 and count((0xE0, 0x7B, 0x00)) > 500
    assert count((0xC6, 0x28, 0x28)) > 20
