"""The report a real `connscale run` writes, opened in headless Chromium: it
renders with its plots and nothing from the network, and every number it
shows equals the timeline's (or, for the verdict's facts, the summary's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from connscale.diagnose.report import write_report
from tests.support.browser import screenshot
from tests.support.procs import connscale
from tests.support.reportpage import check_numbers, shown_numbers
from tests.support.runconfig import write_config

pytestmark = pytest.mark.slow

#: Where the last screenshot is kept for a person to look at (the test's tmp dir goes away).
SHOT_COPY = Path(os.environ.get("CONNSCALE_REPORT_SHOT", "/tmp/connscale-report-test.png"))


def test_the_report_of_a_real_run_in_a_browser(tmp_path: Path) -> None:
    from PIL import Image

    config = write_config(tmp_path)   # 3000 connections in 2 steps, holds, a 3 s final hold
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    r = subprocess.run(connscale("run", "-c", str(config)), capture_output=True, text=True, timeout=150, env=env,
                       cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    (run_dir,) = [p.parent for p in (tmp_path / "runs").glob("*/summary.json")]
    page = run_dir / "report.html"
    assert f"report: {page}" in r.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    # Read as plain JSON: the numbers are checked independently of the package's readers.
    records = [json.loads(line) for line in (run_dir / "timeline.jsonl").read_text().splitlines() if line.strip()]
    assert [p for p in dict.fromkeys(r["phase"] for r in records) if p][:2] == ["setup", "ramp:1"]
    html = page.read_text()
    assert check_numbers(html, records, summary) > 50
    assert 'class="badge held">HELD' in html

    shot = screenshot(page, tmp_path / "report.png", width=1600, height=2200)
    shutil.copyfile(shot, SHOT_COPY)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1600, 2200)
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert len(colors) > 500, "the page looks blank"
    # The plots were drawn: the clients' blue and the final hold's green band are on screen.
    blue = sum(n for n, rgb in colors if _near(rgb, (0x1F, 0x6F, 0xB4)))
    green = sum(n for n, rgb in colors if _near(rgb, (0xE8, 0xF5, 0xE9)))
    assert blue > 500 and green > 5000, (blue, green)

    # Re-rendered later from the directory alone (`connscale report`): the same numbers.
    again = write_report(run_dir, tmp_path / "again.html").read_text()
    assert shown_numbers(again) == shown_numbers(html)


def _near(rgb: tuple[int, int, int], target: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, target))
