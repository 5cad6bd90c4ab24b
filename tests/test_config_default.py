"""The configuration a command reads without -c: one default (config.loader.choose_config) for
`connscale check` and `connscale run`, so check judges what run would run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connscale.app import check as check_mod
from connscale.app import run as run_mod
from connscale.config.loader import PACKAGED_CONFIG, choose_config, load_config
from connscale.config.settings import Config

REPO = Path(__file__).resolve().parent.parent
#: A config of its own, told apart from the shipped experiment by its routes.
LOCAL = "server: {ports: 9100-9102}\nclient: {source_ips: 127.0.0.5}\n"


def test_no_config_anywhere_means_the_shipped_experiment(tmp_path):
    assert choose_config(None, cwd=tmp_path) == str(PACKAGED_CONFIG)
    (tmp_path / "connscale.yaml").write_text("scenario: {target: 5}\n")
    assert choose_config(None, cwd=tmp_path) == str(tmp_path / "connscale.yaml")
    assert choose_config("x.yaml", cwd=tmp_path) == "x.yaml"


def test_the_shipped_experiment_is_the_top_level_connscale_yaml():
    top = REPO / "connscale.yaml"
    assert top.resolve() == PACKAGED_CONFIG.resolve()
    cfg = load_config(PACKAGED_CONFIG)
    assert cfg != Config()  # it is an experiment, not the bare defaults
    assert cfg.scenario.target == 50000 and len(cfg.client.source_ips) * len(cfg.server.ports) >= 4


@pytest.mark.parametrize("local", [False, True], ids=["no ./connscale.yaml", "./connscale.yaml"])
def test_check_and_run_read_the_same_default(tmp_path, monkeypatch, local):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    if local:
        (work / "connscale.yaml").write_text(LOCAL)
    monkeypatch.chdir(work)
    read: dict[str, str | None] = {}

    def loader_of(command: str):
        def load_or_exit(prog, path, overrides=None):
            read[command] = path
            raise SystemExit(2)  # what was read is all this test asks
        return load_or_exit

    monkeypatch.setattr(check_mod, "load_or_exit", loader_of("check"))
    monkeypatch.setattr(run_mod, "load_or_exit", loader_of("run"))
    for command, main in (("check", check_mod.check_main), ("run", run_mod.run_main)):
        with pytest.raises(SystemExit):
            main([])
    expected = str(work / "connscale.yaml") if local else str(PACKAGED_CONFIG)
    assert read == {"check": expected, "run": expected}


def routes_limit(cwd: Path, home: Path, *args: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "connscale", "check", "--json", *args], cwd=cwd,
                         env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 1), out.stderr
    [routes] = [limit for limit in json.loads(out.stdout)["limits"] if limit["key"] == "routes"]
    return routes


@pytest.mark.parametrize("local", [False, True], ids=["no ./connscale.yaml", "./connscale.yaml"])
def test_check_without_c_judges_what_run_would_run(tmp_path, local):
    """The real command: the routes it counts are those of the file run would read (the bare
    defaults have one source IP and one port, the shipped experiment several)."""
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    if local:
        (work / "connscale.yaml").write_text(LOCAL)
    expected = str(work / "connscale.yaml") if local else str(PACKAGED_CONFIG)
    assert routes_limit(work, home) == routes_limit(work, home, "-c", expected)
    assert routes_limit(work, home) != routes_limit(work, home, "-c", "/dev/null")


def test_check_and_run_refuse_the_same_local_file(tmp_path):
    """Both commands, for real, read ./connscale.yaml and name the same bad key."""
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "connscale.yaml").write_text("scenario: {targte: 5}\n")
    said = []
    for command in ("check", "run"):
        out = subprocess.run([sys.executable, "-m", "connscale", command], cwd=tmp_path,
                             env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        said.append(out.stderr.splitlines()[1:])
    assert said[0] == said[1] == ["scenario.targte: unknown key (did you mean 'target'?)"]
