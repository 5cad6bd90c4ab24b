"""Loading a configuration: a YAML file plus dotted command-line overrides -> a frozen `Config`.

Reads the file (bounded, UTF-8, duplicate keys refused), applies the overrides, builds each
section of the settings table (`config.settings`) through cattrs (`config.structure`), then
runs the cross-key checks (`config.checks`). Every problem is one line
``<dotted.key>: <problem>``; they are collected and raised together as one ``ConfigError``
so a user fixes a config in one round trip instead of one per mistake.

`choose_config` names the file a command reads when no ``-c`` is given: one default for
every command that runs or checks an experiment.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import yaml

from connscale.config.addresses import is_ip
from connscale.config.checks import cross_check
from connscale.config.settings import SECTIONS, TOP_KEYS, ClientHost, Config, keys_of
from connscale.config.structure import KeyTable
from connscale.config.values import Invalid, boolean, describe, short_name, unknown_key

__all__ = ["PACKAGED_CONFIG", "ConfigError", "choose_config", "load_config", "parse_config"]

MAX_CONFIG_BYTES = 1 << 20
_NO_OVERRIDES: Mapping[str, object] = MappingProxyType({})
#: The shipped experiment (./connscale.yaml in the source tree links to it).
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "connscale.yaml"


def choose_config(given: str | None, cwd: Path | None = None) -> str:
    """The config file a command reads: -c wins; else ./connscale.yaml; else the shipped experiment.

    `connscale run` and `connscale check` both ask here, so `check` judges what `run` would run."""
    if given:
        return given
    local = (cwd or Path.cwd()) / "connscale.yaml"
    return str(local) if local.exists() else str(PACKAGED_CONFIG)


class ConfigError(Exception):
    """Every problem found in a configuration; ``str()`` is one ``<dotted.key>: <problem>`` line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        # A single positional arg keeps the exception picklable (worker processes re-raise it).
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


@functools.cache
def _key_table(cls: type) -> KeyTable:
    """The YAML keys of a section class, each with its parser; required: a key with no default."""
    defaults = {field.name: field.default for field in attrs.fields(cls)}
    table = keys_of(cls)
    parsers = {key: spec.parse for key, (spec, _) in table.items() if spec.parse is not None}
    required = [key for key, (_, names) in table.items() if any(defaults[n] is attrs.NOTHING for n in names)]
    return KeyTable(f"{cls.__name__}Keys", parsers, required)


def _parse_section(cls: type, raw: object, prefix: str, problems: list[str], failed: set[str],
                   **fixed: Any) -> Any:
    """Build ``cls`` from ``raw``; a key that fails keeps its default so checks can go on.

    Returns None only when a required key is missing (there is no default to fall back to).
    """
    if raw is None:  # a section whose keys are all commented out is YAML null
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix}: expected a mapping, got {describe(raw)}")
        failed.add(prefix)
        required = any(f.default is attrs.NOTHING and f.name not in fixed for f in attrs.fields(cls))
        return None if required else cls(**fixed)
    keys = _key_table(cls)
    given = keys.structure(raw)
    problems += [f"{prefix}.{key}: {message}" for key, message in given.problems]
    failed.update(f"{prefix}.{key}" for key in given.failed)
    if any(key not in given.values for key in keys.required):
        return None
    values: dict[str, Any] = {}
    for key, parsed in given.values.items():
        names = keys_of(cls)[key][1]  # one key may fill several attributes (client.server)
        values.update(zip(names, parsed) if len(names) > 1 else [(names[0], parsed)])
    return cls(**fixed, **values)


def _parse_clients(raw: object, problems: list[str], failed: set[str]) -> dict[str, ClientHost]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"clients: expected a mapping of name -> host settings, got {describe(raw)}")
        return {}
    clients: dict[str, ClientHost] = {}
    for name, entry in raw.items():
        try:
            short_name(name)
        except Invalid as e:
            problems.append(f"clients.{name}: invalid client name: {e}")
            continue
        host = _parse_section(ClientHost, entry, f"clients.{name}", problems, failed, name=name)
        if host is not None:
            clients[name] = host
    return clients


def _apply_overrides(data: Mapping[Any, Any], overrides: Mapping[str, object],
                     problems: list[str]) -> dict[Any, Any]:
    """Set dotted keys on a copy of ``data``; the caller's mappings are never mutated."""
    merged = dict(data)
    for dotted, value in overrides.items():
        if value is None:  # an option the user did not give on the command line
            continue
        path = str(dotted).split(".")
        if not all(path):
            problems.append(f"{dotted}: invalid override key")
            continue
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if child is not None and not isinstance(child, Mapping):
                break  # validation reports the non-mapping itself
            node[part] = dict(child or {})
            node = node[part]
        else:
            node[path[-1]] = value
    return merged


def parse_config(data: Mapping[str, Any] | None,
                 overrides: Mapping[str, object] = _NO_OVERRIDES) -> Config:
    """Validate already-loaded YAML data (plus dotted overrides) into a Config.

    Raises ConfigError listing every problem found.
    """
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"config: top level must be a mapping, got {describe(data)}"])
    problems: list[str] = []
    failed: set[str] = set()
    data = _apply_overrides(data, overrides, problems)
    problems += [f"{key}: {unknown_key(key, TOP_KEYS)}" for key in data if key not in TOP_KEYS]
    # Any: each name gets its own section class, which a dict's one value type cannot say.
    sections: dict[str, Any] = {
        name: _parse_clients(data.get(name), problems, failed) if name == "clients"
        else _parse_section(SECTIONS[name], data.get(name), name, problems, failed)
        for name in TOP_KEYS}
    config = Config(**sections)
    if "client.url" not in failed and config.client.url is not None:
        config = _with_url_target(config, "client.tls" not in failed and _tls_said_off(data), problems)
    problems += cross_check(config, failed)
    if problems:
        raise ConfigError(problems)
    return config


def _with_url_target(config: Config, tls_said_off: bool, problems: list[str]) -> Config:
    """A URL names the server: it is client.server from here on (routes, checks, agents);
    a TLS scheme (rediss, https, wss, mqtts, tls) switches client.tls on, the URL's host
    name its server_name unless client.tls names one (client.tls's other keys say how)."""
    target = config.client.target()
    assert target is not None
    tls = config.client.tls
    if target.tls:
        if tls_said_off:
            problems.append(f"client.tls.enabled: false contradicts client.url, whose {target.scheme}:// speaks "
                            "TLS; give one of them")
        name = tls.server_name
        if name is None and not is_ip(target.host):
            name = target.host
        tls = attrs.evolve(tls, enabled=True, server_name=name)
    client = attrs.evolve(config.client, server_host=target.host, server_ports=target.ports, tls=tls)
    return attrs.evolve(config, client=client)


def _tls_said_off(config: Mapping[str, Any]) -> bool:
    """Whether the YAML's client.tls says off in so many words (false, or enabled: false)."""
    client = config.get("client")
    said = client.get("tls") if isinstance(client, Mapping) else None
    if isinstance(said, Mapping):
        said = said.get("enabled", True)
    try:
        return said is not None and not boolean(said)
    except ValueError:
        return False


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML otherwise resolves silently
    to the last one -- two ``connections:`` lines would be a silent misconfiguration."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike[str] | None,
                overrides: Mapping[str, object] = _NO_OVERRIDES) -> Config:
    """Load the YAML file at ``path`` (None: defaults only) and apply dotted overrides,
    whose values may be command-line strings or typed values; None values are ignored."""
    if path is None:
        return parse_config({}, overrides)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError([f"config: no such file: {path}"]) from None
    except OSError as e:
        raise ConfigError([f"config: cannot read {path}: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config: {path} is not UTF-8 text"]) from None
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError([f"config: {path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; "
                           "this is not a connscale config"])
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except RecursionError:
        raise ConfigError([f"config: {path}: nested too deeply"]) from None
    except ValueError as e:
        # Python refuses to convert integers of thousands of digits.
        what = "a number too long to be one" if "digits" in str(e) else " ".join(str(e).split())[:120]
        raise ConfigError([f"config: {path}: invalid value: {what}"]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        raise ConfigError([f"config: {path}: invalid YAML{where}: {problem}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"config: {path}: invalid YAML: {' '.join(str(e).split())}"]) from None
    return parse_config(data, overrides)
