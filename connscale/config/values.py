"""The config's value parsers: numbers, durations, choices, strings, paths, names.

A parser takes a raw value -- from YAML, or a string from the command line -- and either
returns the typed value or raises ``Invalid`` (a ``ValueError``) whose message completes the
line ``<dotted.key>: <message>``; the loader (`config.loader`) adds the key. Addresses and
ports have their own module (`config.addresses`); which key takes which parser is the
settings table's to say (`config.settings`).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

__all__ = ["Invalid", "InvalidKeys", "Parser", "Workers", "describe", "parse_duration", "unknown_key"]

Workers = int | Literal["auto"]
Parser = Callable[[Any], Any]


class Invalid(ValueError):
    """Raised by parsers; the message is the part after ``<dotted.key>: ``."""


class InvalidKeys(Invalid):
    """Raised by the parser of a nested mapping (``client.tls``): one problem per sub-key,
    each reported as ``<dotted.key>.<sub>: <problem>``."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.by_key = list(problems)
        super().__init__("; ".join(f"{k}: {m}" for k, m in self.by_key))


def describe(value: object) -> str:
    # Keep every problem on one line and bounded, whatever junk the user supplied.
    if value is None:
        return "null"
    if isinstance(value, (str, int, float)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- scalar parsers

def integer(value: object) -> int:
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
    raise Invalid(f"expected an integer, got {describe(value)}")


def real_number(value: object) -> float:
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            pass
        else:
            if math.isfinite(number):  # an infinite rate or timeout is never meant
                return number
    raise Invalid(f"expected a number, got {describe(value)}")


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
        return value.lower() in ("true", "yes", "on")
    raise Invalid(f"expected true or false, got {describe(value)}")


def int_between(lo: int, hi: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        n = integer(value)
        if n < lo or (hi is not None and n > hi):
            bounds = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise Invalid(f"must be {bounds}, got {n}")
        return n
    return parse


def number_between(lo: float, hi: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        number = real_number(value)
        if not lo <= number <= hi:
            raise Invalid(f"must be between {lo:g} and {hi:g}, got {number:g}")
        return number
    return parse


def positive(value: object) -> float:
    number = real_number(value)
    if number <= 0:
        raise Invalid(f"must be > 0, got {number:g}")
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
        return real_number(value)
    except Invalid:
        raise Invalid(f"expected a duration like 5, 5s, 500ms or 2m, got {describe(value)}") from None


def duration(*, allow_zero: bool) -> Callable[[object], float]:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if seconds < 0 or (seconds == 0 and not allow_zero):
            raise Invalid(f"must be {'>=' if allow_zero else '>'} 0 seconds, got {seconds:g}")
        return seconds
    return parse


def choice(*options: str, retired: tuple[str, ...] = ()) -> Callable[[object], str]:
    """One of ``options``; a ``retired`` word also parses (for the code that refuses it in
    its own words) but no message offers it."""
    def parse(value: object) -> str:
        if value in options or value in retired:
            return str(value)
        raise Invalid(f"expected one of {'|'.join(options)}, got {describe(value)}")
    return parse


def worker_count(value: object) -> Workers:
    if value == "auto":
        return "auto"
    try:
        n = integer(value)
    except Invalid:
        n = -1
    if not 0 <= n <= 256:
        raise Invalid(f"expected 'auto' or an integer between 0 and 256, got {describe(value)}")
    return n


def optional(parse: Parser) -> Parser:
    # Only an explicit YAML null means "unset"; overrides of None never reach parsers.
    return lambda value: None if value is None else parse(value)


def non_empty(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"expected a non-empty string, got {describe(value)}")
    return value


def _pattern(regex: str, what: str) -> Callable[[object], str]:
    compiled = re.compile(regex, re.ASCII)

    def parse(value: object) -> str:
        if isinstance(value, str) and compiled.fullmatch(value):
            return value
        raise Invalid(f"expected {what}, got {describe(value)}")
    return parse


short_name = _pattern(r"[A-Za-z0-9_.-]{1,64}", "1-64 characters from [A-Za-z0-9_.-]")


def secret_text(value: object) -> str:
    # Never echo the value: error output lands in terminals, CI logs and bug reports.
    if not isinstance(value, str):
        raise Invalid("expected a string (quote it in YAML)")
    if len(value) < 8:
        raise Invalid("must be at least 8 characters long")
    return value


def user_path(value: object) -> str:
    # Nothing expands ~ for us: values come from YAML or a quoted command-line argument.
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return os.path.expanduser(non_empty(value))


def readable_file(value: object) -> str:
    path = user_path(value)
    if not os.path.exists(path):
        raise Invalid(f"no such file: {path}")
    if os.path.isdir(path):
        # Pipes are fine: an ssh-launched agent reads its secret from /dev/stdin.
        raise Invalid(f"is a directory, not a file: {path}")
    if not os.access(path, os.R_OK):
        raise Invalid(f"not readable: {path}")
    return path


def unknown_key(key: object, known: Sequence[str]) -> str:
    """``unknown key``, with the closest known key when one is close."""
    close = difflib.get_close_matches(str(key), known, n=1)
    return "unknown key" + (f" (did you mean '{close[0]}'?)" if close else "")


def first_duplicate(items: Sequence[Any]) -> Any:
    seen: set[Any] = set()
    for item in items:
        if item in seen:
            return item
        seen.add(item)
    return None


def threshold_lines(value: object) -> tuple[str, ...]:
    """Lines like `held >= 500000`; which metrics exist is diagnose's to say (`connscale run` checks)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or len(items) > 256:
        raise Invalid(f"expected a list of lines like 'held >= 500000', got {describe(value)}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item.strip() or len(item) > 256 or "\n" in item:
            raise Invalid(f"[{i}]: expected one line like 'held >= 500000', got {describe(item)}")
    return tuple(item.strip() for item in items)


def observe_target(value: object) -> str:
    """A pid or a process name (as `connscale observe --pid/--name` takes them)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    return process_name(value)


def process_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value or len(value) > 64:
        raise Invalid(f"expected a process name like redis-server, got {describe(value)}")
    return value.strip()


def agent_names(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise Invalid(f"expected a list of agent names, got {describe(value)}")
    names = tuple(short_name(v) for v in value)
    duplicate = first_duplicate(names)
    if duplicate is not None:
        raise Invalid(f"{duplicate!r} is named twice")
    return names


def auto_or_boolean(value: object) -> bool | None:
    """None for "auto", else a boolean."""
    if value == "auto":
        return None
    try:
        return boolean(value)
    except Invalid:
        raise Invalid(f"expected auto, true or false, got {describe(value)}") from None


def dump_auto(value: bool | None) -> bool | str:
    return "auto" if value is None else value


# ---------------------------------------------------------------- per-client-host values

def shell_words(value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # one string from the command line: split like a shell would
        try:
            return tuple(shlex.split(value))
        except ValueError as e:
            raise Invalid(f"cannot split {describe(value)}: {e}") from None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise Invalid(f"expected a list of strings, got {describe(value)}")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def env_vars(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise Invalid(f"expected a mapping of NAME: value, got {describe(value)}")
    env: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise Invalid(f"invalid environment variable name {describe(name)}")
        # `PYTHONHASHSEED: 0` is natural YAML; bools and nulls are likelier mistakes.
        if not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise Invalid(f"value of {name} must be a string, got {describe(item)}")
        if "\n" in str(item) or "\0" in str(item):
            # (never echoed: these values may be secrets) they travel as lines over ssh's stdin
            raise Invalid(f"value of {name} must be one line")
        env[name] = str(item)
    return env


def ssh_user_name(value: object) -> str:
    """A remote user name as ssh takes it: never an option (`-oProxyCommand=...`), nor a host."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}", value, re.ASCII):
        if "@" not in value:
            return value
    raise Invalid(f"expected a user name (letters, digits, '.', '_', '-'; not starting with '-'), "
                  f"got {describe(value)}")

