"""connscale configuration: YAML file + dotted command-line overrides -> frozen settings.

Every setting is declared once, as an attrs field carrying its default and its parser
(see ``_setting``); loading, validation, unknown-key detection and ``Config.as_dict``
are all driven by that table, so adding a key means adding one line.

Parsers take a raw value -- from YAML, or a string from the command line -- and either
return the typed value or raise ``ValueError`` whose message completes the line
``<dotted.key>: <message>``. Problems are collected and raised together as one
``ConfigError`` so a user fixes a config in one round trip instead of one per mistake.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Literal

import attrs
import yaml

from connscale.config.endpoints import WILDCARDS, endpoint_address
from connscale.records.base import RecordError
from connscale.config.target import DEFAULT_PORTS, PROTOCOLS, ProfileOptions, Target, parse_url
from connscale.config.tls import (
    ClientTLSSettings,
    ServerTLSSettings,
    certificate_problem,
    check_ca_file,
    check_cert_pair,
    is_self_signed,
)

__all__ = [
    "ClientHost", "ClientSettings", "Config", "ConfigError", "ControlSettings", "ObserveSettings", "RunSettings",
    "ScenarioSettings", "ServerSettings", "load_config", "parse_config", "parse_duration",
    "parse_hostport", "parse_ips", "parse_ports",
]

Workers = int | Literal["auto"]
Framing = Literal["line", "raw"]
Parser = Callable[[Any], Any]

MAX_PORTS = 1024
MAX_CONFIG_BYTES = 1 << 20
MAX_IPS = 4096
_NO_OVERRIDES: Mapping[str, object] = MappingProxyType({})


class ConfigError(Exception):
    """Every problem found in a configuration; ``str()`` is one ``<dotted.key>: <problem>`` line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        # A single positional arg keeps the exception picklable (worker processes re-raise it).
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class _Invalid(ValueError):
    """Raised by parsers; the message is the part after ``<dotted.key>: ``."""


class _InvalidKeys(_Invalid):
    """Raised by the parser of a nested mapping (``client.tls``): one problem per sub-key,
    each reported as ``<dotted.key>.<sub>: <problem>``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.by_key = list(problems)
        super().__init__("; ".join(f"{k}: {m}" for k, m in self.by_key))


def _describe(value: object) -> str:
    # Keep every problem on one line and bounded, whatever junk the user supplied.
    if value is None:
        return "null"
    if isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- scalar parsers

def _integer(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):  # YAML `yes` is a bool, never a count
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:  # "1e6" is how people write a million; YAML 1.1 leaves it a string
            number = float(value)
        except ValueError:
            pass
        else:
            if number.is_integer():
                return int(number)
    raise _Invalid(f"expected an integer, got {_describe(value)}")


def _number(value: object) -> float:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            pass
        else:
            if math.isfinite(number):  # an infinite rate or timeout is never meant
                return number
    raise _Invalid(f"expected a number, got {_describe(value)}")


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise _Invalid(f"expected true or false, got {_describe(value)}")


def _int(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        n = _integer(value)
        if n < lo or (hi is not None and n > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise _Invalid(f"must be {bounds}, got {n}")
        return n
    return parse


def _number_between(lo: float, hi: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        number = _number(value)
        if not lo <= number <= hi:
            raise _Invalid(f"must be between {lo:g} and {hi:g}, got {number:g}")
        return number
    return parse


def _positive(value: object) -> float:
    number = _number(value)
    if number <= 0:
        raise _Invalid(f"must be > 0, got {number:g}")
    return number


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``"5"``, ``"5s"``, ``"500ms"``, ``"2m"``, ``"1h"``.

    Sign is not checked here: each key has its own bound, checked by the caller.
    """
    if isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        return float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        return _number(value)
    except _Invalid:
        raise _Invalid(f"expected a duration like 5, 5s, 500ms or 2m, got {_describe(value)}") from None


def _duration(*, allow_zero: bool) -> Callable[[object], float]:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise _Invalid(f"must be {'>=' if allow_zero else '>'} 0 seconds, got {seconds:g}")
        return seconds
    return parse


def _choice(*options: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if value in options:
            return str(value)
        raise _Invalid(f"expected one of {'|'.join(options)}, got {_describe(value)}")
    return parse


def _workers(value: object) -> Workers:
    if value == "auto":
        return "auto"
    try:
        n = _integer(value)
    except _Invalid:
        n = -1
    if not 0 <= n <= 256:
        raise _Invalid(f"expected 'auto' or an integer between 0 and 256, got {_describe(value)}")
    return n


def _optional(parse: Parser) -> Parser:
    # Only an explicit YAML null means "unset"; overrides of None never reach parsers.
    return lambda value: None if value is None else parse(value)


def _string(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"expected a non-empty string, got {_describe(value)}")
    return value


def _pattern(regex: str, what: str) -> Callable[[object], str]:
    compiled = re.compile(regex, re.ASCII)

    def parse(value: object) -> str:
        if isinstance(value, str) and compiled.fullmatch(value):
            return value
        raise _Invalid(f"expected {what}, got {_describe(value)}")
    return parse


_name = _pattern(r"[A-Za-z0-9_.-]{1,64}", "1-64 characters from [A-Za-z0-9_.-]")


def _secret(value: object) -> str:
    # Never echo the value: error output lands in terminals, CI logs and bug reports.
    if not isinstance(value, str):
        raise _Invalid("expected a string (quote it in YAML)")
    if len(value) < 8:
        raise _Invalid("must be at least 8 characters long")
    return value


def _path(value: object) -> str:
    # Nothing expands ~ for us: values come from YAML or a quoted command-line argument.
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return os.path.expanduser(_string(value))


def _readable_file(value: object) -> str:
    path = _path(value)
    if not os.path.exists(path):
        raise _Invalid(f"no such file: {path}")
    if os.path.isdir(path):
        # Pipes are fine: an ssh-launched agent reads its secret from /dev/stdin.
        raise _Invalid(f"is a directory, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise _Invalid(f"not readable: {path}")
    return path


# ---------------------------------------------------------------- addresses and ports

def _items(spec: object, what: str, *, ints: bool) -> list[int | str]:
    """Flatten ``"a,b"``, ``["a", "b,c"]`` (and ints when allowed) into stripped items."""
    elements = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    items: list[int | str] = []
    for element in elements:
        if isinstance(element, str):
            items.extend(part.strip() for part in element.split(",") if part.strip())
        elif ints and isinstance(element, int) and not isinstance(element, bool):
            items.append(element)
        else:
            raise _Invalid(f"expected {what}, got {_describe(element)}")
    return items


_PORT_RANGE = re.compile(r"(\d+)(?:\s*-\s*(\d+))?", re.ASCII)


def _first_duplicate(items: Sequence[Any]) -> Any:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def parse_ports(spec: object) -> tuple[int, ...]:
    """Ports from ``8989``, ``"8989"``, ``"8989-8992"``, ``"8989,8990"`` or a list of those.

    Order is kept (it is the order connections are spread over); duplicates are an error
    because they silently double the load on one port.
    """
    ports: list[int] = []
    for item in _items(spec, "a port, a range like 8989-8992, or a list", ints=True):
        if isinstance(item, int):
            lo = hi = item
        elif match := _PORT_RANGE.fullmatch(item):
            lo = int(match[1])
            hi = int(match[2]) if match[2] else lo
        else:
            raise _Invalid(f"expected a port or a range like 8989-8992, got {_describe(item)}")
        for port in (lo, hi):
            if not 1 <= port <= 65535:
                raise _Invalid(f"port {port} out of range 1..65535")
        if lo > hi:
            raise _Invalid(f"port range {lo}-{hi} is reversed")
        if len(ports) + hi - lo + 1 > MAX_PORTS:
            raise _Invalid(f"too many ports (more than {MAX_PORTS})")
        ports.extend(range(lo, hi + 1))
    if not ports:
        raise _Invalid("no ports given")
    if (duplicate := _first_duplicate(ports)) is not None:
        raise _Invalid(f"duplicate port {duplicate}")
    return tuple(ports)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _Invalid(f"expected an IP address, got {_describe(text)}") from None


def _ip_literal(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected an IP address, got {_describe(value)}")
    return str(_ip(value.strip()))  # canonical form, so equal addresses compare equal


def parse_ips(spec: object) -> tuple[str, ...]:
    """Addresses from ``"127.0.0.2"``, ``"127.0.0.2-127.0.0.9"``, ``"127.0.0.2-9"``, lists and
    comma-separated mixes of those. ``""``/``[]`` give ``()`` (let the kernel choose)."""
    addrs: list[str] = []
    for item in _items(spec, "an IP address, a range or a list", ints=False):
        assert isinstance(item, str)
        lo_text, dash, hi_text = (part.strip() for part in item.partition("-"))
        lo = _ip(lo_text)
        if not dash:
            hi = lo
        else:
            # "10.0.0.2-9" / "10.0.0.250-1.9" abbreviate the leading octets.
            if lo.version == 4 and re.fullmatch(r"\d+(?:\.\d+){0,2}", hi_text, re.ASCII):
                hi_parts = hi_text.split(".")
                hi_text = ".".join(lo_text.split(".")[: 4 - len(hi_parts)] + hi_parts)
            hi = _ip(hi_text)
            if hi.version != lo.version:
                raise _Invalid(f"range {item} mixes IPv4 and IPv6")
            if int(hi) < int(lo):  # same family (checked above); mypy cannot see that through the union
                raise _Invalid(f"address range {item} is reversed")
        # Count before expanding: "0.0.0.0-255.255.255.255" must fail fast, not eat memory.
        if len(addrs) + int(hi) - int(lo) + 1 > MAX_IPS:
            raise _Invalid(f"too many addresses (more than {MAX_IPS})")
        addrs.extend(str(type(lo)(n)) for n in range(int(lo), int(hi) + 1))
    if (duplicate := _first_duplicate(addrs)) is not None:
        raise _Invalid(f"duplicate address {duplicate}")
    return tuple(addrs)


_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?", re.ASCII)


def _host(value: object) -> str:
    """An IP literal (canonicalised) or a DNS name (resolved later, at connect time)."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            # "10.0.0.300" would pass the hostname grammar; it is a typo'd address.
            if _HOSTNAME.fullmatch(value) and not re.fullmatch(r"[\d.]+", value):
                return value
    raise _Invalid(f"expected a host name or IP address, got {_describe(value)}")


def parse_hostport(spec: object) -> tuple[str, tuple[int, ...]]:
    """``(host, ports)`` from ``"127.0.0.1:8989-8992"``, ``"[::1]:8989"``, ``"host:8989,8990"``."""
    if not isinstance(spec, str):
        raise _Invalid(f"expected HOST:PORT, got {_describe(spec)}")
    text = spec.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise _Invalid(f"expected [IPV6]:PORT, got {_describe(spec)}")
        if _ip(host).version != 6:
            raise _Invalid(f"brackets are only for IPv6 addresses, got {_describe(spec)}")
        return str(_ip(host)), parse_ports(rest[1:])
    host, colon, ports = text.rpartition(":")
    if not colon or not host:
        raise _Invalid(f"expected HOST:PORT, got {_describe(spec)}")
    if ":" in host:
        raise _Invalid(f"IPv6 addresses need brackets, e.g. [::1]:8989, got {_describe(spec)}")
    return _host(host), parse_ports(ports)


def _one_hostport(value: object) -> tuple[str, int]:
    host, ports = parse_hostport(value)
    if len(ports) != 1:
        raise _Invalid(f"expected exactly one port, got {len(ports)}")
    return host, ports[0]


def _format_hostport(host: str, ports: Sequence[int]) -> str:
    """Inverse of parse_hostport, with consecutive ports folded back into ranges."""
    runs: list[list[int]] = []
    for port in ports:
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    text = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)
    return f"[{host}]:{text}" if ":" in host else f"{host}:{text}"


def _format_master(hostport: tuple[str, int] | None) -> str | None:
    return hostport and _format_hostport(hostport[0], hostport[1:])


_ENDPOINT_KINDS = ("tcp", "ssl", "unix")


def _endpoint(value: object) -> str:
    text = _string(value)
    if text.partition(":")[0] not in _ENDPOINT_KINDS:
        raise _Invalid("expected a server endpoint starting with tcp:, ssl: or unix:, "
                       f"got {_describe(value)}")
    endpoint_address(text)  # EndpointError (a ValueError) says what is wrong with it
    return text


# ---------------------------------------------------------------- per-client-host values

def _ssh_options(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # one string from the command line: split like a shell would
        try:
            return tuple(shlex.split(value))
        except ValueError as e:
            raise _Invalid(f"cannot split {_describe(value)}: {e}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise _Invalid(f"expected a list of strings, got {_describe(value)}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _env(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a mapping of NAME: value, got {_describe(value)}")
    env: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise _Invalid(f"invalid environment variable name {_describe(name)}")
        # `PYTHONHASHSEED: 0` is natural YAML; bools and nulls are likelier mistakes.
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise _Invalid(f"value of {name} must be a string, got {_describe(item)}")
        if "\n" in str(item) or "\0" in str(item):
            # (never echoed: these values may be secrets) they travel as lines over ssh's stdin
            raise _Invalid(f"value of {name} must be one line")
        env[name] = str(item)
    return env


def _ssh_user(value: object) -> str:
    """A remote user name as ssh takes it: never an option (`-oProxyCommand=...`), nor a host."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}", value, re.ASCII):
        if "@" not in value:
            return value
    raise _Invalid(f"expected a user name (letters, digits, '.', '_', '-'; not starting with '-'), "
                   f"got {_describe(value)}")


# ---------------------------------------------------------------- what the clients speak to

def _url(value: object) -> str:
    """`client.url`: checked whole here (scheme, host, ports, path); kept as written."""
    try:
        parse_url(value, parse_hostport)
    except ValueError as e:
        raise _Invalid(str(e)) from None
    assert isinstance(value, str)
    return value.strip()


def _options(*names: str) -> Callable[[object], dict[str, Any]]:
    """A profile's options (`client.http: {path: /health}`), each checked by the field of
    `ProfileOptions` it fills, so a bad one is one line naming it."""
    fields = {f.name: f for f in attrs.fields(ProfileOptions)}

    def parse(value: object) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a mapping with keys from {', '.join(names)}, got {_describe(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in names:
                raise _Invalid(_unknown("", key, names))
            try:
                out[key] = fields[key].metadata["connscale.wire"](item)
            except RecordError as e:
                raise _Invalid(f"{key}: {e}") from None
        return out
    return parse


def _redact_url(url: str) -> str:
    """The URL with its password (`scheme://user:PASSWORD@host`) redacted."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1<redacted>@", url)


def _dump_options(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if k == "headers" else v for k, v in value.items()}




def _thresholds(value: object) -> tuple[str, ...]:
    """Lines like `held >= 500000`; which metrics exist is diagnose's to say (`connscale run` checks)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or len(items) > 256:
        raise _Invalid(f"expected a list of lines like 'held >= 500000', got {_describe(value)}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip() or len(item) > 256 or "\n" in item:
            raise _Invalid(f"[{i}]: expected one line like 'held >= 500000', got {_describe(item)}")
    return tuple(item.strip() for item in items)


def _observe_target(value: object) -> str:
    """A pid or a process name (as `connscale observe --pid/--name` takes them)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    return _process_name(value)


# ---------------------------------------------------------------- TLS (client.tls, server.tls)
# The records and the checks of their files live in config/tls.py; here, how YAML says them.

def _tls_keys(value: Mapping[Any, Any], parsers: Mapping[str, Parser]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Parse a TLS mapping key by key; every problem is kept, named by its sub-key."""
    values: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, raw in value.items():
        if key not in parsers:
            close = difflib.get_close_matches(str(key), list(parsers), n=1)
            problems.append((str(key), "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")))
            continue
        try:
            values[key] = parsers[key](raw)
        except ValueError as e:
            problems.append((key, str(e)))
    return values, problems


_CLIENT_TLS_PARSERS: Mapping[str, Parser] = MappingProxyType({
    "enabled": _boolean,
    "server_name": _optional(_host),
    "verify": _boolean,
    "ca_file": _optional(_readable_file),
    "cert": _optional(_readable_file),
    "key": _optional(_readable_file),
    "resume": _boolean,
    "handshake_timeout": lambda v: _number_between(0.001, 3600.0)(parse_duration(v)),
})


def _client_tls(value: object) -> ClientTLSSettings:
    """``client.tls``: true/false, or a mapping of its keys (TLS is on unless it says ``enabled: false``)."""
    if isinstance(value, (bool, str)):
        return ClientTLSSettings(enabled=_boolean(value))
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected true, false or a mapping of TLS keys, got {_describe(value)}")
    values, problems = _tls_keys(value, _CLIENT_TLS_PARSERS)
    settings = ClientTLSSettings(**{"enabled": True, **values})
    if not problems and settings.enabled:
        problems += _client_tls_files(settings)
    if problems:
        raise _InvalidKeys(problems)
    return settings


def _client_tls_files(s: ClientTLSSettings) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if s.ca_file is not None and (why := check_ca_file(s.ca_file)):
        problems.append(("ca_file", why))
    if s.key is not None and s.cert is None:
        problems.append(("key", "given without client.tls.cert"))
    if s.cert is not None and (wrong := check_cert_pair(s.cert, s.key)):
        problems.append(wrong)
    return problems


def _dump_client_tls(s: ClientTLSSettings) -> dict[str, Any]:
    return s.to_wire()


_SERVER_TLS_PARSERS: Mapping[str, Parser] = MappingProxyType({
    "cert": _readable_file,
    "key": _optional(_readable_file),
    # A certificate made for the run: said so in what the run records, made again by the next run.
    "auto": _boolean,
})


def _server_tls(value: object) -> ServerTLSSettings:
    """``server.tls``: ``auto`` (a self-signed certificate made for the run), ``{cert, key}``, or off."""
    if value == "auto":
        return ServerTLSSettings(enabled=True, auto=True)
    if value is None:
        return ServerTLSSettings()
    if isinstance(value, (bool, str)):
        if _boolean(value):
            raise _Invalid("expected auto or a mapping {cert: FILE, key: FILE}, got true")
        return ServerTLSSettings()
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected auto, off or a mapping {{cert: FILE, key: FILE}}, got {_describe(value)}")
    values, problems = _tls_keys(value, _SERVER_TLS_PARSERS)
    auto = bool(values.get("auto", False))
    if "cert" not in values and not problems:
        if not auto:
            problems.append(("cert", "required (or server.tls: auto for a certificate made for the run)"))
        elif "key" in values:
            problems.append(("key", "given without server.tls.cert"))
    settings = ServerTLSSettings(enabled=True, auto=auto, cert=values.get("cert"), key=values.get("key"))
    if not problems and settings.cert is not None:
        if wrong := check_cert_pair(settings.cert, settings.key):
            problems.append(wrong)
        elif why := certificate_problem(settings.cert):
            problems.append(("cert", why))
    if problems:
        raise _InvalidKeys(problems)
    return settings


def _dump_server_tls(s: ServerTLSSettings) -> object:
    if not s.enabled:
        return None
    if s.cert is None:
        return "auto"
    out: dict[str, Any] = {"cert": s.cert, "key": s.key}
    if s.auto:
        out["auto"] = True
    return out


# ---------------------------------------------------------------- the settings table

def _plain(value: Any) -> Any:
    """JSON-able rendering that the matching parser accepts back (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@attrs.frozen
class _Spec:
    parse: Parser | None
    dump: Callable[..., Any] = _plain
    key: str | None = None   # YAML key, when it differs from the attribute name
    secret: bool = False     # redacted by Config.as_dict()
    secret_values: bool = False  # a mapping whose values (not names) are redacted
    redact: Callable[[Any], Any] | None = None  # the secret part of a value, redacted by as_dict()


_META = "connscale.config"
#: What a redacted secret is written as.
REDACTED = "<redacted>"


def _setting(default: Any, parse: Parser | None = None, *, key: str | None = None,
             dump: Callable[..., Any] = _plain, secret: bool = False, secret_values: bool = False,
             redact: Callable[[Any], Any] | None = None, **field: Any) -> Any:
    """One row of the settings table. Several attributes may share a ``key``: the first
    declares the parser, which returns a tuple spread over them (and dump takes them all)."""
    return attrs.field(default=default,
                       metadata={_META: _Spec(parse, dump, key, secret, secret_values, redact)}, **field)


@attrs.frozen
class ServerSettings:
    """``server:`` the ping/pong listener."""

    interface: str = _setting("127.0.0.1", _ip_literal)
    ports: tuple[int, ...] = _setting((8989,), parse_ports)
    backlog: int = _setting(4096, _int(1, 1_000_000))
    # line, raw, or websocket (the upgrade, then ping frames answered with pong frames).
    framing: str = _setting("line", _choice("line", "raw", "websocket"))
    workers: Workers = _setting("auto", _workers)   # 0 = serve inside the hub process
    status_interval: float = _setting(5.0, _duration(allow_zero=False))
    max_line: int = _setting(1024, _int(16, 65536))   # bytes
    # TLS on every port, whatever the framing (see config/tls.py).
    tls: ServerTLSSettings = _setting(ServerTLSSettings(), _server_tls, dump=_dump_server_tls)


@attrs.frozen
class ClientSettings:
    """``client:`` the connection pool (standalone or as a hub's agent)."""

    server_host: str = _setting("127.0.0.1", parse_hostport, key="server", dump=_format_hostport)
    server_ports: tuple[int, ...] = _setting((8989,), key="server")
    connections: int = _setting(1000, _int(0, 100_000_000))
    rate: float = _setting(2000.0, _positive)                  # connects per second
    interval: float = _setting(5.0, _duration(allow_zero=False))
    timeout: float = _setting(1.0, _duration(allow_zero=False))
    source_ips: tuple[str, ...] = _setting((), parse_ips)      # () = the kernel chooses
    framing: Framing = _setting("line", _choice("line", "raw"))
    workers: Workers = _setting("auto", _workers)              # 0 = inside the agent process
    per_route_max: int = _setting(14000, _int(1, 65535))       # per (source ip, server ip:port)
    status_interval: float = _setting(5.0, _duration(allow_zero=False))
    master: tuple[str, int] | None = _setting(
        None, _optional(_one_hostport), dump=_format_master)
    name: str | None = _setting(None, _optional(_name))         # None = hostname, at runtime
    # An agent whose hub is gone this long stops its load (and waits for orders).
    hub_grace: float = _setting(60.0, _duration(allow_zero=True))
    # How the client's closes end: fin (orderly; each closed port waits out
    # TIME_WAIT on this host) or rst (a reset, SO_LINGER 0: no TIME_WAIT).
    close: Literal["fin", "rst"] = _setting("fin", _choice("fin", "rst"))
    # The target as one URL (redis://127.0.0.1:6379, wss://host/socket, tcp://host:8989-8992):
    # protocol, TLS, server and path at once; `connscale run` then starts no server of its own.
    url: str | None = _setting(None, _optional(_url), redact=_redact_url)
    # What the connections speak (net/profiles); None = client.framing (line or raw), or the URL's.
    protocol: str | None = _setting(None, _optional(_choice(*PROTOCOLS)))
    http: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("method", "path", "headers"),
                                       dump=_dump_options, hash=False)
    websocket: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("path", "subprotocol", "headers"),
                                            dump=_dump_options, hash=False)
    mqtt: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("client_prefix"), hash=False)
    custom: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("send", "expect", "expect_regex"),
                                         hash=False)
    # A user and password for the target (MQTT's CONNECT, Redis's AUTH), also from the URL's
    # user:password@. The password never rides a command line (procs.records.without_password).
    user: str | None = _setting(None, _optional(_string))
    password: str | None = _setting(None, _optional(_string), secret=True)
    # TLS around every connection, whatever the protocol inside (see config/tls.py); a TLS
    # scheme in `url` switches it on (`_with_url_target`).
    tls: ClientTLSSettings = _setting(ClientTLSSettings(), _client_tls, dump=_dump_client_tls)
    max_reply: int = _setting(65536, _int(64, 16 * 1024 * 1024))   # bytes of one reply at most
    # A session opening (upgrade, CONNECT, first PING) at most, once connected (and TLS is up).
    handshake_timeout: float = _setting(5.0, _duration(allow_zero=False))

    def shown_url(self) -> str | None:
        """`url` as it may be shown (its password redacted)."""
        return None if self.url is None else _redact_url(self.url)

    def target(self) -> Target | None:
        """What `url` names, parsed (None without a URL)."""
        return None if self.url is None else parse_url(self.url, parse_hostport)

    def effective_protocol(self) -> str:
        target = self.target()
        if self.protocol is not None:
            return self.protocol
        return target.protocol if target is not None else self.framing

    def profile_options(self) -> ProfileOptions:
        """Everything the chosen profile needs, from the URL and the profile's own keys."""
        protocol = self.effective_protocol()
        target = self.target()
        values: dict[str, Any] = {"protocol": protocol, "max_reply": self.max_reply,
                                  "handshake_timeout": self.handshake_timeout}
        if target is not None:
            port = target.ports[0]
            host = f"[{target.host}]" if ":" in target.host else target.host
            values["host"] = host if port == DEFAULT_PORTS[target.scheme] or len(target.ports) > 1 \
                else f"{host}:{port}"
            values["path"] = target.path
        section = {"http": self.http, "websocket": self.websocket, "mqtt": self.mqtt,
                   "custom": self.custom}.get(protocol, {})
        values.update(section)
        values.update(user=self.user if self.user is not None else (target.user if target else None),
                      password=self.target_password())
        return ProfileOptions(**values)

    def target_password(self) -> str | None:
        """The target's password: client.password, else the URL's."""
        if self.password is not None:
            return self.password
        target = self.target()
        return target.password if target is not None else None


@attrs.frozen
class ControlSettings:
    """``control:`` the hub's controller and operator console."""

    listen: str = _setting("tcp:8790:interface=127.0.0.1", _endpoint)
    secret: str | None = _setting(None, _optional(_secret), secret=True)
    secret_file: str | None = _setting(None, _optional(_readable_file))
    tls_ca: str | None = _setting(None, _optional(_readable_file))  # CA that signed an ssl: hub's cert
    console: Literal["ssh", "telnet", "none"] = _setting("ssh", _choice("ssh", "telnet", "none"))
    console_listen: str = _setting("tcp:8791:interface=127.0.0.1", _endpoint)
    console_keys: str | None = _setting(None, _optional(_path))  # None = ~/.ssh/authorized_keys
    console_user: str = _setting("admin", _string)
    # Prometheus /metrics of the hub (e.g. tcp:9108:interface=127.0.0.1); None = off.
    metrics_listen: str | None = _setting(None, _optional(_endpoint))


@attrs.frozen
class ClientHost:
    """One entry of ``clients:``: a remote machine the hub starts an agent on over ssh."""

    name: str   # its key under `clients:`, so deliberately not a setting of its own
    host: str = _setting(attrs.NOTHING, _host)
    user: str | None = _setting(None, _optional(_ssh_user))
    port: int = _setting(22, _int(1, 65535))
    ssh_options: tuple[str, ...] = _setting((), _ssh_options)
    python: str = _setting("python3", _string)   # remote interpreter, e.g. /opt/venv/bin/python
    workers: Workers = _setting("auto", _workers)
    source_ips: tuple[str, ...] = _setting((), parse_ips)
    env: Mapping[str, str] = _setting(attrs.Factory(dict), _env, hash=False, secret_values=True)
    # HOST:PORT the agent on this host dials; None = the hub's control.listen address.
    master: tuple[str, int] | None = _setting(None, _optional(_one_hostport), dump=_format_master)
    # A pid or process name: client_start then launches an observer of it there, not an agent.
    observe: str | None = _setting(None, _optional(_observe_target))


def _agent_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"expected a list of agent names, got {_describe(value)}")
    names = tuple(_name(v) for v in value)
    duplicate = _first_duplicate(names)
    if duplicate is not None:
        raise _Invalid(f"{duplicate!r} is named twice")
    return names


def _auto_or_boolean(value: object) -> bool | None:
    """None for "auto", else a boolean."""
    if value == "auto":
        return None
    try:
        return _boolean(value)
    except _Invalid:
        raise _Invalid(f"expected auto, true or false, got {_describe(value)}") from None


def _dump_auto(value: bool | None) -> bool | str:
    return "auto" if value is None else value


@attrs.frozen
class ScenarioSettings:
    """``scenario:`` the ramp the hub drives its agents through."""

    target: int = _setting(50000, _int(1, 100_000_000))
    rate: float = _setting(2000.0, _positive)
    steps: int = _setting(5, _int(1, 1000))                  # ramp in this many equal steps
    hold: float = _setting(5.0, _duration(allow_zero=True))   # after each step
    final_hold: float = _setting(10.0, _duration(allow_zero=True))
    max_failures: int = _setting(0, _int(0))                  # stop once failures exceed this
    time_limit: float = _setting(110.0, _duration(allow_zero=False))
    # Server-side failures are the clients' too (and counted there); count the
    # server's own tally toward max_failures only when asked.
    count_server_failures: bool = _setting(False, _boolean)
    # ramp: reach `target` in steps and hold it. search: find the largest count
    # that passes the SLO by itself, up to `target` (see README, "Search mode").
    mode: Literal["ramp", "search"] = _setting("ramp", _choice("ramp", "search"))
    search_start: int = _setting(5000, _int(1, 100_000_000))      # the first plateau
    search_growth: float = _setting(2.0, _number_between(1.01, 100.0))  # next plateau = last pass x this
    search_plateau: float = _setting(3.0, _number_between(1.0, 1000.0))  # hold each plateau this many client.intervals
    search_resolution: float = _setting(0.05, _number_between(0.001, 1.0))  # stop narrowing within this share
    slo_p99_ms: float = _setting(100.0, _positive)                # a plateau passes with p99 RTT at most this
    slo_timeout_rate: float = _setting(0.001, _number_between(0.0, 1.0))  # timeouts per ping
    slo_failures: int = _setting(0, _int(0))                      # failures of any cause per plateau
    # What the run must measure to pass, e.g. "held >= 500000" (README, "Gating a release on capacity").
    thresholds: tuple[str, ...] = _setting((), _thresholds)
    # The fleet `connscale run` drives besides the `clients:` it launches over ssh: agents
    # already registered with the hub (started by hand), named and waited for.
    agents: tuple[str, ...] = _setting((), _agent_names)
    # Whether `connscale run` starts an agent on this host too; auto (None): only when the
    # fleet is empty (no `clients:`, no `scenario.agents`).
    local_agent: bool | None = _setting(None, _auto_or_boolean, dump=_dump_auto)


def _process_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value or len(value) > 64:
        raise _Invalid(f"expected a process name like redis-server, got {_describe(value)}")
    return value.strip()


@attrs.frozen
class ObserveSettings:
    """``observe:`` the server process an observer watches (`connscale observe`, `connscale run`).

    Neither set: `connscale run` watches its own server workers."""

    pid: int | None = _setting(None, _optional(_int(1, 1 << 22)))
    name: str | None = _setting(None, _optional(_process_name))


@attrs.frozen
class RunSettings:
    """``run:`` where a run's records go."""

    dir: str = _setting("runs", _path)


@attrs.frozen
class NetSettings:
    """``net:`` how connscale's own sockets are driven, on both sides."""

    #: connscale's own transports, dispatch and timer wheel (net.fastpath); false:
    #: Twisted's listenTCP/connectTCP transports and a callLater per connection.
    #: CONNSCALE_FAST_PATH (1/0) overrides it.
    fast_path: bool = _setting(True, _boolean)


@attrs.frozen
class Config:
    """The whole validated configuration. ``clients`` is a plain dict: treat it as read-only."""

    server: ServerSettings = attrs.field(factory=ServerSettings)
    client: ClientSettings = attrs.field(factory=ClientSettings)
    control: ControlSettings = attrs.field(factory=ControlSettings)
    clients: Mapping[str, ClientHost] = attrs.field(factory=dict, hash=False)
    scenario: ScenarioSettings = attrs.field(factory=ScenarioSettings)
    run: RunSettings = attrs.field(factory=RunSettings)
    observe: ObserveSettings = attrs.field(factory=ObserveSettings)
    net: NetSettings = attrs.field(factory=NetSettings)

    def as_dict(self, redact_secrets: bool = True) -> dict[str, Any]:
        """Plain JSON-able dict in the YAML layout; parse_config() accepts it back unchanged
        (unless a redacted secret was set). Secrets are redacted by default because this is
        what gets written into run directories."""
        out: dict[str, Any] = {}
        for section in _TOP_KEYS:
            if section == "clients":
                out[section] = {n: _dump(h, redact_secrets) for n, h in self.clients.items()}
            else:
                out[section] = _dump(getattr(self, section), redact_secrets)
        return out


_SECTIONS: dict[str, type] = {
    "server": ServerSettings, "client": ClientSettings, "control": ControlSettings,
    "scenario": ScenarioSettings, "run": RunSettings, "observe": ObserveSettings, "net": NetSettings,
}
_TOP_KEYS = ("server", "client", "control", "clients", "scenario", "run", "observe", "net")


@functools.cache
def _keys(cls: type) -> dict[str, tuple[_Spec, tuple[str, ...]]]:
    """YAML key -> (spec, attribute names it fills), in declaration order."""
    table: dict[str, tuple[_Spec, tuple[str, ...]]] = {}
    for field in attrs.fields(cls):
        if (spec := field.metadata.get(_META)) is not None:
            key = spec.key or field.name
            first, names = table.get(key, (spec, ()))
            table[key] = (first, names + (field.name,))
    return table


def _dump(obj: Any, redact_secrets: bool) -> dict[str, Any]:
    out = {}
    cls: type = type(obj)
    for key, (spec, names) in _keys(cls).items():
        value = spec.dump(*(getattr(obj, name) for name in names))
        if spec.secret_values and redact_secrets and value:
            value = {k: REDACTED for k in value}
        if redact_secrets and value is not None and spec.redact is not None:
            value = spec.redact(value)
        out[key] = REDACTED if spec.secret and redact_secrets and value is not None else value
    return out


# ---------------------------------------------------------------- loading

def _unknown(prefix: str, key: object, known: Sequence[str]) -> str:
    dotted = f"{prefix}.{key}" if prefix else str(key)
    close = difflib.get_close_matches(str(key), known, n=1)
    return f"{dotted}: unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")


def _parse_section(cls: type, raw: object, prefix: str, problems: list[str], failed: set[str],
                   **fixed: Any) -> Any:
    """Build ``cls`` from ``raw``; a key that fails keeps its default so checks can go on.

    Returns None only when a required key is missing (there is no default to fall back to).
    """
    if raw is None:  # a section whose keys are all commented out is YAML null
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"{prefix}: expected a mapping, got {_describe(raw)}")
        failed.add(prefix)
        required = any(f.default is attrs.NOTHING and f.name not in fixed for f in attrs.fields(cls))
        return None if required else cls(**fixed)
    table = _keys(cls)
    values: dict[str, Any] = {}
    given: set[str] = set()
    for key, value in raw.items():  # file order, so problems read top to bottom
        if key not in table:
            problems.append(_unknown(prefix, key, list(table)))
            continue
        spec, names = table[key]
        given.update(names)
        assert spec.parse is not None
        try:
            parsed = spec.parse(value)
        except _InvalidKeys as e:
            problems += [f"{prefix}.{key}.{sub}: {message}" for sub, message in e.by_key]
            failed.add(f"{prefix}.{key}")
            continue
        except ValueError as e:
            problems.append(f"{prefix}.{key}: {e}")
            failed.add(f"{prefix}.{key}")
            continue
        values.update(zip(names, parsed) if len(names) > 1 else [(names[0], parsed)])
    missing = [f.name for f in attrs.fields(cls)
               if f.default is attrs.NOTHING and f.name not in values and f.name not in fixed]
    # A required key that was given but invalid has been reported already.
    problems += [f"{prefix}.{name}: required" for name in missing if name not in given]
    return None if missing else cls(**fixed, **values)


def _parse_clients(raw: object, problems: list[str], failed: set[str]) -> dict[str, ClientHost]:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        problems.append(f"clients: expected a mapping of name -> host settings, got {_describe(raw)}")
        return {}
    clients: dict[str, ClientHost] = {}
    for name, entry in raw.items():
        try:
            _name(name)
        except _Invalid as e:
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


# Cross-key checks: (keys they read, check). Skipped when any of those keys failed to parse,
# because the value seen would be a stand-in default and the complaint misleading.
def _check_timeout(c: Config) -> Iterator[str]:
    if c.client.timeout >= 100 * c.client.interval:  # a ping that may take 100 intervals is a typo
        yield (f"client.timeout: must be less than 100 * client.interval "
               f"({100 * c.client.interval:g}s), got {c.client.timeout:g}s")


def _check_url(c: Config) -> Iterator[str]:
    target = c.client.target()
    if target is None:
        return
    if c.client.protocol is not None and c.client.protocol != target.protocol:
        yield (f"client.protocol: {c.client.protocol} contradicts client.url, which says {target.protocol} "
               f"({target.scheme}://); give one of them")


def _check_secret(c: Config) -> Iterator[str]:
    if c.control.secret is not None and c.control.secret_file is not None:
        yield "control.secret_file: cannot be used together with control.secret"


def _check_source_family(c: Config) -> Iterator[str]:
    try:
        server = ipaddress.ip_address(c.client.server_host)
    except ValueError:
        return  # a host name: its family is only known once resolved
    for ip in c.client.source_ips:
        if ipaddress.ip_address(ip).version != server.version:
            yield (f"client.source_ips: {ip} cannot reach IPv{server.version} "
                   f"client.server {c.client.server_host}")
            return


def _check_listeners(c: Config) -> Iterator[str]:
    # The hub binds all of these; a clash would only surface as EADDRINUSE mid-start.
    # With server.workers 0 there is no hub (no controller, no console) to clash with.
    endpoints = [("control.listen", c.control.listen)]
    if c.control.console != "none":
        endpoints.append(("control.console_listen", c.control.console_listen))
    if c.control.metrics_listen is not None:
        endpoints.append(("control.metrics_listen", c.control.metrics_listen))
    binds = [(key, *addr) for key, ep in endpoints if (addr := endpoint_address(ep))]
    if c.server.workers != 0:
        binds += [("server.ports", c.server.interface, port) for port in c.server.ports]
    for i, (key, interface, port) in enumerate(binds):
        for other, other_interface, other_port in binds[:i]:
            if (port == other_port != 0 and key != other
                    and (interface == other_interface or {interface, other_interface} & WILDCARDS)):
                yield f"{key}: port {port} is also used by {other}"


def _check_observe(c: Config) -> Iterator[str]:
    if c.observe.pid is not None and c.observe.name is not None:
        yield "observe: give pid or name, not both"


def _check_tls_trust(c: Config) -> Iterator[str]:
    # One config for both ends (connscale run): a client that verifies must trust the server's own cert.
    client, server = c.client.tls, c.server.tls
    if (client.enabled and client.verify and client.ca_file is None and server.enabled
            and server.cert is not None and not server.auto and is_self_signed(server.cert)):
        yield (f"client.tls.ca_file: required with client.tls.verify on: server.tls.cert {server.cert} is "
               f"self-signed, so no system CA vouches for it (trust it with client.tls.ca_file: {server.cert}, "
               "or set client.tls.verify: false)")


def _check_agents(c: Config) -> Iterator[str]:
    for name in c.scenario.agents:
        if name in c.clients:
            yield (f"scenario.agents: {name} is also under clients: (launched over ssh); name it in one place")
            return


_CROSS_CHECKS: tuple[tuple[tuple[str, ...], Callable[[Config], Iterator[str]]], ...] = (
    (("client.timeout", "client.interval"), _check_timeout),
    (("control.secret", "control.secret_file"), _check_secret),
    (("client.url", "client.protocol"), _check_url),
    (("client.server", "client.source_ips"), _check_source_family),
    (("control", "control.listen", "control.console", "control.console_listen", "control.metrics_listen",
      "server", "server.interface", "server.ports", "server.workers"), _check_listeners),
    (("observe", "observe.pid", "observe.name"), _check_observe),
    (("client", "client.tls", "server", "server.tls"), _check_tls_trust),
    (("scenario", "scenario.agents", "clients"), _check_agents),
)


def parse_config(data: Mapping[str, Any] | None,
                 overrides: Mapping[str, object] = _NO_OVERRIDES) -> Config:
    """Validate already-loaded YAML data (plus dotted overrides) into a Config.

    Raises ConfigError listing every problem found.
    """
    if data is None:  # an empty file
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError([f"config: top level must be a mapping, got {_describe(data)}"])
    problems: list[str] = []
    failed: set[str] = set()
    data = _apply_overrides(data, overrides, problems)
    problems += [_unknown("", key, _TOP_KEYS) for key in data if key not in _TOP_KEYS]
    # Any: each name gets its own section class, which a dict's one value type cannot say.
    sections: dict[str, Any] = {
        name: _parse_clients(data.get(name), problems, failed) if name == "clients"
        else _parse_section(_SECTIONS[name], data.get(name), name, problems, failed)
        for name in _TOP_KEYS}
    config = Config(**sections)
    if "client.url" not in failed and config.client.url is not None:
        config = _with_url_target(config, "client.tls" not in failed and _tls_said_off(data), problems)
    for keys, check in _CROSS_CHECKS:
        if failed.isdisjoint(keys):
            problems += check(config)
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
        if name is None and not _is_ip(target.host):
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
        return said is not None and not _boolean(said)
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        _ip(host)
    except _Invalid:
        return False
    return True


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
