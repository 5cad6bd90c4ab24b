"""The run report's hosts: the run's manifest (its host, limits, versions, sysctls and effective
configuration) and, for a fleet run, each agent's host's, as key/value rows of text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from connscale.diagnose.manifest import read_manifest
from connscale.diagnose.runfiles import RunFiles


@attrs.frozen
class Cell:
    """A manifest value as text: `code` when it is JSON (a list or a mapping)."""

    key: str
    text: str
    code: bool


@attrs.frozen
class Host:
    host: tuple[Cell, ...]
    rlimits: tuple[Cell, ...]
    versions: tuple[Cell, ...]
    sysctls: tuple[Cell, ...]
    written: str


@attrs.frozen
class Manifest:
    """One manifest section: `agent` names a fleet agent's host (empty: the run's own)."""

    agent: str
    host: Host | None  # None: the run directory has no manifest.json
    config: str | None  # the effective configuration (secrets removed), as indented JSON


@attrs.frozen
class AgentHost:
    """A fleet agent's host: its manifest, or the file the summary named when it is unreadable."""

    name: str
    file: str
    manifest: Manifest | None


def _cells(data: Mapping[str, Any]) -> tuple[Cell, ...]:
    return tuple(Cell(str(k), json.dumps(v, sort_keys=True), True) if isinstance(v, (dict, list))
                 else Cell(str(k), str(v), False) for k, v in data.items())


def _gib(n: Any) -> str:
    try:
        return f"{int(n) / 2**30:.1f} GiB"
    except (TypeError, ValueError):
        return "-"


def manifest(data: Mapping[str, Any] | None, config: Mapping[str, Any] | None, agent: str = "") -> Manifest:
    """A manifest as the page shows it (`config`: the run's config.json, when the manifest has none)."""
    if data is None:
        return Manifest(agent, None, json.dumps(config, indent=2, sort_keys=True) if config else None)
    host = dict(data.get("host", {}))
    host["ram"] = _gib(host.pop("ram_bytes", None))
    host["ram available at start"] = _gib(host.pop("ram_available_bytes", None))
    rlimits = {f"RLIMIT_{k.upper()} (soft / hard)": f"{v.get('soft')} / {v.get('hard')}"
               for k, v in data.get("rlimits", {}).items()}
    sysctls = {k: (" ".join(map(str, v)) if isinstance(v, list) else v) for k, v in data.get("sysctls", {}).items()}
    shown = Host(_cells(host), _cells(rlimits), _cells(data.get("versions", {})), _cells(sysctls),
                 str(data.get("written", "")))
    config = data.get("config") or config
    return Manifest(agent, shown, json.dumps(config, indent=2, sort_keys=True) if config else None)


def agent_hosts(run: RunFiles) -> list[AgentHost]:
    """Each agent's host, as its manifest says (beside the run's own host)."""
    if run.summary is None:
        return []
    hosts = []
    for name, file in sorted(run.summary.manifests.items()):
        if name == "hub":
            continue
        # Only a name in the run directory: summary.json is not trusted to point elsewhere.
        data = read_manifest(run.dir, Path(file).name)
        hosts.append(AgentHost(name, file, manifest(data, None, name) if data is not None else None))
    return hosts
