"""The manifest: what this machine and this configuration were when a run began.

A connection count means little without the limits it ran under: the same
box holds 28k or 1M depending on a handful of sysctls and rlimits. The run
writes `manifest.json` into its directory at the start, so a report can be
re-rendered later (or elsewhere) from the run directory alone.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import socket
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from connscale.host.sysctl import PROC_SYS, read_sysctl

MANIFEST_FILE = "manifest.json"

#: The sysctls that bound connection counts, in the order a reader checks them.
SYSCTLS: tuple[str, ...] = (
    "fs.file-max",
    "fs.nr_open",
    "net.ipv4.ip_local_port_range",
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_abort_on_overflow",
)
#: Present only while nf_conntrack is loaded; its absence is worth saying, not a zero.
CONNTRACK = "net.netfilter.nf_conntrack_max"

_RLIMITS = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "as": resource.RLIMIT_AS}

#: Keys whose values are secrets wherever they appear (e.g. clients.NAME.env).
_SECRET_WORDS = re.compile(r"secret|passw|token|key|credential|auth", re.IGNORECASE)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _cpu_model(cpuinfo: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Hardware", "Processor"):
            return value.strip()
    return None


def _os_name(os_release: str) -> str | None:
    for line in os_release.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return None


def _limit(value: int) -> int | str:
    return "unlimited" if value == resource.RLIM_INFINITY else value


def _versions() -> dict[str, str]:
    import connscale

    out = {"connscale": connscale.__version__, "python": platform.python_version()}
    from importlib import metadata

    for dist in ("twisted", "hdrhistogram"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def redact(data: Any) -> Any:
    """A copy of a config dict with every value under a secret-looking key hidden.

    `Config.as_dict()` already hides `control.secret`; this also covers free-form
    places such as `clients.NAME.env` (API_TOKEN=...). File paths are kept:
    a path to a secret is not the secret.
    """
    if isinstance(data, Mapping):
        out = {}
        for key, value in data.items():
            hidden = (_SECRET_WORDS.search(str(key)) and not str(key).endswith(("_file", "_keys", "_ca"))
                      and value is not None and not isinstance(value, (Mapping, list)))
            out[key] = "<redacted>" if hidden else redact(value)
        return out
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def collect_manifest(config: Mapping[str, Any] | None = None, root: str = PROC_SYS) -> dict[str, Any]:
    """This host's kernel, CPU, memory, limits and sysctls, the versions, and the config."""
    uname = platform.uname()
    try:
        import psutil

        ram = int(psutil.virtual_memory().total)
        available: int | None = int(psutil.virtual_memory().available)
    except Exception:  # a manifest must never stop a run
        ram, available = 0, None
    sysctls: dict[str, Any] = {}
    for name in SYSCTLS:
        value = read_sysctl(name, root)
        sysctls[name] = list(value) if isinstance(value, tuple) else value
    conntrack = read_sysctl(CONNTRACK, root)
    sysctls[CONNTRACK] = conntrack if conntrack is not None else "not loaded"
    rlimits = {}
    for name, which in _RLIMITS.items():
        soft, hard = resource.getrlimit(which)
        rlimits[name] = {"soft": _limit(soft), "hard": _limit(hard)}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {
            "hostname": socket.gethostname(),
            "os": _os_name(_read_text("/etc/os-release")),
            "kernel": f"{uname.system} {uname.release}",
            "kernel_version": uname.version,
            "machine": uname.machine,
            "cpu_model": _cpu_model(_read_text("/proc/cpuinfo")),
            "cores": cores,
            "ram_bytes": ram,
            "ram_available_bytes": available,
        },
        "rlimits": rlimits,
        "sysctls": sysctls,
        "versions": _versions(),
        "argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]],
        "config": redact(dict(config)) if config is not None else None,
    }


def write_manifest(run_dir: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> Path:
    path = Path(run_dir) / MANIFEST_FILE
    path.write_text(json.dumps(collect_manifest(config), indent=2, sort_keys=True) + "\n")
    return path


def read_manifest(run_dir: str | os.PathLike[str], name: str = MANIFEST_FILE) -> dict[str, Any] | None:
    """A run directory's manifest (`name`: a fleet agent's host's, manifest-NAME.json); None when
    it is missing or not a JSON object."""
    try:
        data = json.loads((Path(run_dir) / name).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
