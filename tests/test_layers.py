"""The layer contract (.importlinter): imports point downward, no cycles.

Checked on the tree as it is, and on a copy with one upward import planted, so
the check itself is known to bite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest.importorskip("importlinter")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )


def copy_tree(dest: Path) -> Path:
    shutil.copytree(REPO / "connscale", dest / "connscale", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", dest / ".importlinter")
    return dest


def test_the_tree_keeps_every_contract():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


def test_an_upward_import_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    wire = root / "connscale" / "net" / "wire.py"
    wire.write_text(wire.read_text() + "\nfrom connscale.control import plan  # planted\n")
    result = lint(root)
    assert result.returncode != 0
    assert "Layers: imports point downward only BROKEN" in result.stdout
    assert "connscale.net.wire -> connscale.control.plan" in result.stdout


def test_a_cycle_inside_a_layer_is_caught(tmp_path):
    root = copy_tree(tmp_path)
    wheel = root / "connscale" / "net" / "wheel.py"
    wheel.write_text(wheel.read_text() + "\nfrom connscale.net import pool  # planted\n")
    pool = root / "connscale" / "net" / "pool.py"
    assert "connscale.net.wheel" in pool.read_text()
    result = lint(root)
    assert result.returncode != 0
    assert "No import cycles between modules of one layer BROKEN" in result.stdout
