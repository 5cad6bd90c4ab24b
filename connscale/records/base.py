"""Typed records for what crosses a process boundary: the base class and strict field parsers.

Everything connscale processes say to each other over PB (an agent's registration,
orders, reports, a worker's hello) is a frozen attrs class deriving from `Record`,
defined once next to its users (`procs/records.py`, `control/records.py`) and used
by both ends. Inside a process only records are passed around; plain data exists
only at the PB boundary, where `to_wire()` makes it and `from_wire()` checks it.

`from_wire` is strict where the config loader is forgiving: the peer is a program,
so an integer must be an int (not "12" or 1e6), numbers must be finite, strings and
lists have a length bound, and every value has a range. A malformed or
out-of-bounds payload raises `RecordError`, whose message is one line naming the
record and field. Unknown keys are ignored (a newer peer may send more), within
a bound.

This is a package of its own below `config` because every layer that talks PB or
writes a record needs it, config included (its settings parse with these same field
parsers): it is the format of what crosses a process or lands in a file, not
configuration. `records`, not `wire` (net/wire.py is the ping line protocol) nor
`pb` (records land in files too: the timeline, summary.json).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

__all__ = [
    "Record", "RecordError", "boolean", "choice", "either", "field", "field_doc", "hostname", "integer",
    "ip_or_empty", "loose", "mapping", "nested", "number", "optional", "seq", "text",
]

Parse = Callable[[object], Any]
R = TypeVar("R", bound="Record")

_META = "connscale.wire"
_DOC = "connscale.doc"
#: Unknown keys tolerated in one record (a newer peer); beyond that it is junk.
MAX_EXTRA_KEYS = 32


class RecordError(ValueError):
    """A payload that does not fit its record; ``str()`` is one line."""


def _describe(value: object) -> str:
    if value is None:
        return "None"
    if isinstance(value, (str, bytes, int, float)):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- parsers

def integer(lo: int = 0, hi: int = 2**31 - 1) -> Parse:
    def parse(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecordError(f"expected an integer, got {_describe(value)}")
        if not lo <= value <= hi:
            raise RecordError(f"must be between {lo} and {hi}, got {_describe(value)}")
        return value
    return parse


def number(lo: float, hi: float, *, open_low: bool = False) -> Parse:
    def parse(value: object) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RecordError(f"expected a number, got {_describe(value)}")
        n = float(value)
        if not math.isfinite(n):
            raise RecordError(f"must be a finite number, got {_describe(value)}")
        if n < lo or n > hi or (open_low and n == lo):
            low = f"> {lo:g}" if open_low else f">= {lo:g}"
            raise RecordError(f"must be {low} and <= {hi:g}, got {n:g}")
        return n
    return parse


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise RecordError(f"expected true or false, got {_describe(value)}")
    return value


def text(max_len: int = 255, pattern: str | None = None, what: str = "") -> Parse:
    regex = re.compile(pattern) if pattern else None

    def parse(value: object) -> str:
        if isinstance(value, bytes):  # PB may hand back bytes for str on old peers
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise RecordError("expected UTF-8 text") from None
        if not isinstance(value, str):
            raise RecordError(f"expected text, got {_describe(value)}")
        if len(value) > max_len:
            raise RecordError(f"longer than {max_len} characters")
        if regex is not None and not regex.fullmatch(value):
            raise RecordError(f"expected {what or f'text matching {pattern}'}, got {_describe(value)}")
        return value
    return parse


def choice(*options: object) -> Parse:
    def parse(value: object) -> object:
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        # type too: True == 1, but a flag is not a count
        if not any(value == o and type(value) is type(o) for o in options):
            raise RecordError(f"expected one of {', '.join(map(str, options))}, got {_describe(value)}")
        return value
    return parse


def optional(parse: Parse) -> Parse:
    def wrapped(value: object) -> object:
        return None if value is None else parse(value)
    return wrapped


def either(*parsers: Parse) -> Parse:
    """The first parser that accepts the value (e.g. an int or "auto")."""
    def parse(value: object) -> object:
        problems = []
        for p in parsers:
            try:
                return p(value)
            except RecordError as e:
                problems.append(str(e))
        raise RecordError(" or ".join(problems))
    return parse


def seq(item: Parse, max_len: int) -> Parse:
    def parse(value: object) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"expected a list, got {_describe(value)}")
        if len(value) > max_len:
            raise RecordError(f"more than {max_len} items ({len(value)})")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item(v))
            except RecordError as e:
                raise RecordError(f"[{i}]: {e}") from None
        return tuple(out)
    return parse


def mapping(key: Parse, value: Parse, max_len: int) -> Parse:
    def parse(data: object) -> dict[Any, Any]:
        if not isinstance(data, Mapping):
            raise RecordError(f"expected a mapping, got {_describe(data)}")
        if len(data) > max_len:
            raise RecordError(f"more than {max_len} entries ({len(data)})")
        out = {}
        for k, v in data.items():
            kk = key(k)
            try:
                out[kk] = value(v)
            except RecordError as e:
                raise RecordError(f"[{kk!r}]: {e}") from None
        return out
    return parse


#: Exact types that are plain already (a subclass takes the long way, unchanged).
#: (numbers: `loose` returns them as they are; scalars: `_plain` does)
_NUMBERS = frozenset({int, float, bool})
_SCALARS = frozenset({str, int, float, bool, type(None)})


def loose(max_items: int = 256, max_depth: int = 4) -> Parse:
    """Plain data whose fields are not ours to type (a worker's resource usage): only
    dicts with text keys, lists, text, numbers, booleans and None, bounded in size."""
    key = text(255)

    def check(value: object, depth: int, budget: list[int]) -> object:
        budget[0] -= 1
        if budget[0] < 0:
            raise RecordError(f"more than {max_items} values")
        # Exact numbers first: a hub checks ~40 of these per worker row, 25,000
        # rows a second from a fleet of 500 agents (bench/fleet.py).
        if type(value) in _NUMBERS:
            return value
        if value is None or isinstance(value, (bool, int, str)):
            if isinstance(value, str) and len(value) > 4096:
                raise RecordError("a text value longer than 4096 characters")
            return value
        if isinstance(value, float):
            return value
        if depth >= max_depth:
            raise RecordError(f"nested deeper than {max_depth}")
        if isinstance(value, Mapping):
            return {key(k): check(v, depth + 1, budget) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [check(v, depth + 1, budget) for v in value]
        raise RecordError(f"unexpected {_describe(value)}")

    def parse(value: object) -> object:
        return check(value, 0, [max_items])
    return parse


def nested(cls: type[R]) -> Parse:
    def parse(value: object) -> R:
        if isinstance(value, cls):
            return value
        return cls.from_wire(value)
    return parse


def ip_or_empty(value: object) -> str:
    """An IP literal in canonical form, or "" (no source address: the kernel chooses)."""
    s = text(64)(value)
    if s == "":
        return s
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        raise RecordError(f"expected an IP address, got {_describe(s)}") from None


_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")


def hostname(value: object) -> str:
    """An IP literal (canonical form) or a DNS name."""
    s = text(253)(value)
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        if _HOSTNAME.fullmatch(s):
            return s
    raise RecordError(f"expected a host name or IP address, got {_describe(s)}")


# ---------------------------------------------------------------- records

def field(parse: Parse, default: Any = attrs.NOTHING, *, doc: str = "", **kw: Any) -> Any:
    """An attrs field of a record with the parser that checks its wire form.

    `doc` says what the field holds, in words a reader of the file it lands in
    needs (the README's table of the timeline is checked against these)."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("use factory= for mutable defaults")
    return attrs.field(default=default, metadata={_META: parse, _DOC: doc}, **kw)


def field_doc(cls: type, name: str) -> str:
    """The `doc` of a record's field ("" when it has none)."""
    return str(attrs.fields_dict(cls)[name].metadata.get(_DOC, ""))


def _plain(value: object) -> object:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Record):
        return value.to_wire()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Record:
    """Base of every record that crosses PB (subclasses are ``@attrs.frozen``)."""

    # Slotted all the way down: a hub holds ~100 worker rows a second, each a record.
    __slots__ = ()

    @classmethod
    def from_wire(cls: type[R], data: object) -> R:
        """Check and convert what a peer sent; RecordError (one line) if it does not fit."""
        name = cls.__name__
        if not isinstance(data, Mapping):
            raise RecordError(f"{name}: expected a mapping, got {_describe(data)}")
        fields = attrs.fields(cls)  # type: ignore[arg-type]
        if len(data) > len(fields) + MAX_EXTRA_KEYS:
            raise RecordError(f"{name}: {len(data)} keys is too many")
        values: dict[str, Any] = {}
        for f in fields:
            if f.name not in data:
                if f.default is attrs.NOTHING:
                    raise RecordError(f"{name}.{f.name}: missing")
                continue
            try:
                values[f.name] = f.metadata[_META](data[f.name])
            except RecordError as e:
                raise RecordError(f"{name}.{f.name}: {e}") from None
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:  # a cross-field check of the record itself
            raise RecordError(f"{name}: {e}") from None

    def to_wire(self) -> dict[str, object]:
        """Plain data (dicts, lists, text, numbers) for PB and JSON."""
        return {name: _plain(getattr(self, name)) for name in _field_names(type(self))}


#: Field names per record class: a hub writes ~130 records a second into its timeline
#: (a million's 106 worker rows among them), and `attrs.fields` checks its argument each time.
_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = tuple(f.name for f in attrs.fields(cls))
    return names
