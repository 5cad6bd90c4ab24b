"""What differs between the hosts (and configurations) of two or more runs: their manifests, diffed.

A difference in capacity between two runs is only half an answer without the setting
that changed: a sysctl, an rlimit, the kernel, a version, a key of the configuration.
Each manifest (`manifest.json`, `diagnose.manifest`) is flattened to dotted keys
(`sysctls.net.ipv4.ip_local_port_range`, `rlimits.nofile.soft`, `config.server.workers`)
and every key whose value is not the same in all runs is one `Difference`. The
manifest is free-form by design (a newer connscale records more), so this walks it
generically rather than by its keys; what changes every run without meaning anything
(when it was written, the memory free at that moment, the command line, which names
the run directory) is left out.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from connscale.diagnose.gates import Difference

#: Keys that differ between any two runs and say nothing about the host.
IGNORED = frozenset({"written", "host.ram_available_bytes", "argv", "config.run.dir"})
#: Values longer than this are cut (a manifest is the host's, and may hold anything).
MAX_VALUE = 4000


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Dotted key -> the value as text; lists and scalars are leaves."""
    out: dict[str, str] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if dotted in IGNORED:
                continue
            out.update(flatten(value, dotted))
        return out
    out[prefix] = _text(data)
    return out


def _text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        text = " ".join(str(v) for v in value)  # a sysctl's several numbers, as sysctl prints them
    else:
        text = json.dumps(value, sort_keys=True)
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 3] + "..."


def diff(manifests: Sequence[Mapping[str, Any] | None]) -> tuple[Difference, ...]:
    """Every setting not the same in all the manifests, in order; a run without a manifest
    is left out of the comparison (its values are None), and the rest still compare."""
    flat = [flatten(m) if m is not None else None for m in manifests]
    present = [f for f in flat if f is not None]
    if len(present) < 2:
        return ()
    keys: dict[str, None] = {}
    for f in present:
        keys.update(dict.fromkeys(f))
    out = []
    for key in keys:
        values = tuple(f.get(key) if f is not None else None for f in flat)
        if len({v for v, f in zip(values, flat) if f is not None}) > 1:
            out.append(Difference(key, values))
    return tuple(sorted(out, key=lambda d: _order(d.key)))


#: Sections in the order a reader looks for the cause: the host, its limits, then software and configuration.
_SECTIONS = ("host", "sysctls", "rlimits", "versions", "config")


def _order(key: str) -> tuple[int, str]:
    section = key.split(".", 1)[0]
    return (_SECTIONS.index(section) if section in _SECTIONS else len(_SECTIONS), key)


def describe(d: Difference, names: Sequence[str] = ("before", "after")) -> str:
    """`sysctls.net.core.somaxconn: 4096 -> 65535` (two runs) or `key: a=1, b=2, c=-` (more)."""
    shown = ["-" if v is None else v for v in d.values]
    if len(shown) == 2:
        return f"{d.key}: {shown[0]} -> {shown[1]}"
    return f"{d.key}: " + ", ".join(f"{n}={v}" for n, v in zip(names, shown))
