"""Headless Chromium (Debian's `chromium` package) for looking at reports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

#: Flags that work as root in a container with no display, no GPU and no network.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is missing: the README's test command installs it (apt-get install -y chromium)"
    return path


def screenshot(page: Path, out: Path, width: int = 1600, height: int = 2600, timeout: float = 90) -> Path:
    """Open `page` from disk and save what the browser drew; returns `out`."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        r = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
             f"--window-size={width},{height}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout, check=False,
        )
    assert r.returncode == 0 and out.exists(), f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return out
