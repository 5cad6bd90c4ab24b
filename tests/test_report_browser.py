"""A report of a real hub's run, opened in headless Chromium: it renders with
its plots and nothing from the network, and every number it shows equals the
timeline's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connscale.diagnose.report import write_report
from connscale.metrics.timeline import read_timeline
from tests.support.browser import dump_dom, screenshot
from tests.test_report import check_numbers

pytestmark = pytest.mark.slow


def drive_a_real_run(tmp_path: Path) -> Path:
    """Hub + agent on loopback, phases named through ctl as `connscale run` does."""
    from tests.test_e2e_hub import Hub

    hub = Hub(tmp_path)
    proc = hub.start()
    run_dir = tmp_path / "rec"
    try:
        with hub.agent("local") as agent:
            agent.wait_line("registered with controller", 30)
            for step, phase in ((1, "hold:1"), (2, "final_hold")):
                assert hub.ctl("phase", f"ramp:{step}").returncode == 0
                assert hub.ctl("start", "400", "--client", "local").returncode == 0
                hub.wait_count(400 * step, "local")
                assert hub.ctl("phase", phase).returncode == 0
                wait_seconds(run_dir, phase, 3)
            assert hub.ctl("phase", "stop").returncode == 0
    finally:
        proc.stop()
    return run_dir


def wait_seconds(run_dir: Path, phase: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sum(1 for r in read_timeline(run_dir / "timeline.jsonl") if r.get("phase") == phase) < n:
        assert time.monotonic() < deadline, f"no {n} seconds of {phase} in the timeline"
        time.sleep(0.3)


def test_real_report_in_a_browser(tmp_path: Path) -> None:
    from PIL import Image

    run_dir = drive_a_real_run(tmp_path)
    records = list(read_timeline(run_dir / "timeline.jsonl"))
    assert [p for p in dict.fromkeys(r["phase"] for r in records) if p] == \
        ["ramp:1", "hold:1", "ramp:2", "final_hold", "stop"]
    page = write_report(run_dir)
    html = page.read_text()
    assert check_numbers(html, records, None) > 40

    # The browser's DOM: every plot decoded to a real image, nothing fetched.
    dom = dump_dom(page)
    assert dom.count('<img alt="') == 7 and "final_hold" in dom

    shot = screenshot(page, tmp_path / "report.png", width=1600, height=2200)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1600, 2200)
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 500, "the page looks blank"
    # Plots were drawn: the clients' blue line and the final hold's green band are on screen.
    counts = {rgb: n for n, rgb in colors}
    blue = sum(n for rgb, n in counts.items() if _near(rgb, (0x1F, 0x6F, 0xB4)))
    green = sum(n for rgb, n in counts.items() if _near(rgb, (0xE8, 0xF5, 0xE9)))
    assert blue > 500 and green > 5000, (blue, green)


def _near(rgb: tuple[int, int, int], target: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, target))
