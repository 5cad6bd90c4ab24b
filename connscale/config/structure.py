"""One YAML mapping through a table of parsers, structured by cattrs.

cattrs does what it does well: it refuses keys the table does not name
(``forbid_extra_keys``), notices a required key that is missing, and runs every key's
parser to the end, collecting each failure with the key it belongs to (detailed
validation's ``ClassValidationError``) instead of stopping at the first. What it cannot
say the way connscale says it stays here: each failure becomes one line that names its
key, in the order the file gives the keys (cattrs groups by kind, and reports unknown
keys as a set), with the closest known key suggested for a typo. The parsers themselves
(`config.values`, `config.addresses`) stay ours: durations, port and address ranges and
their messages are the domain, not structuring.

A section is built from what did parse, so one bad key does not hide the cross-key
checks of the others (`Structured.values` holds only the keys that parsed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import AttributeOverride, make_dict_structure_fn, override

from connscale.config.values import InvalidKeys, Parser, unknown_key

__all__ = ["KeyTable", "Structured"]

_CONVERTER = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


class _Absent:
    """The value of a key the mapping does not give (a key class's default)."""


_ABSENT = _Absent()


@attrs.frozen
class Structured:
    """What one mapping said: the keys that parsed, and one problem per key that did not."""

    values: dict[str, Any]
    #: (key, message) in file order; a nested mapping's problem is keyed ``key.sub``.
    problems: list[tuple[str, str]]
    #: The given keys whose value did not parse (a check that reads one of them is skipped).
    failed: frozenset[str]


class KeyTable:
    """The keys one mapping may have (a config section, ``client.tls``), each with its parser.

    ``name`` names the key class cattrs structures into (an identifier; it shows only in a traceback)."""

    def __init__(self, name: str, parsers: Mapping[str, Parser], required: Sequence[str] = ()) -> None:
        self.known = list(parsers)
        self.required = tuple(required)
        fields = {key: attrs.field() if key in required else attrs.field(default=_ABSENT) for key in parsers}
        self._cls: type = attrs.make_class(name, fields, kw_only=True, frozen=True)
        self._structure = _structure_fn(self._cls, {key: _override(parse) for key, parse in parsers.items()})

    def structure(self, raw: Mapping[Any, Any]) -> Structured:
        try:
            return Structured(self._given(raw), [], frozenset())
        except ClassValidationError as e:
            problems = sorted(self._problems(e, raw), key=lambda p: p[0])
        failed = frozenset(key for _, key, _ in problems if key in raw and key in self.known)
        good = {key: value for key, value in raw.items() if key in self.known and key not in failed}
        try:  # the good keys parse again: only when the file has a mistake, and cheap
            values = self._given(good)
        except ClassValidationError:  # a required key is missing: there is nothing to build
            values = {}
        lines = [(f"{key}.{sub}" if sub else str(key), line)
                 for _, key, said in problems for sub, line in _split(said)]
        return Structured(values, lines, failed)

    def _given(self, raw: Mapping[Any, Any]) -> dict[str, Any]:
        keyed = self._structure(raw, self._cls)
        return {key: value for key in self.known if (value := getattr(keyed, key)) is not _ABSENT}

    def _problems(self, error: ClassValidationError,
                  raw: Mapping[Any, Any]) -> list[tuple[int, object, str | InvalidKeys]]:
        """(position in the file, key, message or InvalidKeys) for each failure cattrs collected;
        a missing required key goes after every given one."""
        order = {key: i for i, key in enumerate(raw)}
        found: list[tuple[int, object, str | InvalidKeys]] = []
        for exc in error.exceptions:
            if isinstance(exc, ForbiddenExtraKeysError):
                found += [(order[key], key, unknown_key(key, self.known)) for key in exc.extra_fields]
                continue
            key = _attribute(exc)
            if key not in raw and key in self.required:
                found.append((len(raw) + self.required.index(key), key, "required"))
            elif isinstance(exc, ValueError):
                found.append((order[key], key, exc if isinstance(exc, InvalidKeys) else str(exc)))
            else:
                raise exc  # a parser's bug, not the user's value: a traceback, as before cattrs
        return found


def _split(message: str | InvalidKeys) -> list[tuple[str, str]]:
    """A nested mapping's failure is one line per sub-key; any other is one line."""
    return message.by_key if isinstance(message, InvalidKeys) else [("", message)]


def _attribute(exc: BaseException) -> str:
    notes = [note for note in getattr(exc, "__notes__", ()) if isinstance(note, AttributeValidationNote)]
    return notes[-1].name


def _override(parse: Parser) -> AttributeOverride:
    # cattrs passes the type too; our parsers need only the value.
    return override(struct_hook=lambda value, _type: parse(value))


_StructureFn = Callable[[Mapping[Any, Any], type], Any]


def _structure_fn(cls: type, overrides: Mapping[str, AttributeOverride]) -> _StructureFn:
    """cattrs' structuring function of a key class: extra keys refused, every key's error collected."""
    # Typed as taking anything: mypy matches `**overrides` against its bool keywords too.
    make: Callable[..., _StructureFn] = make_dict_structure_fn
    return make(cls, _CONVERTER, _cattrs_forbid_extra_keys=True, _cattrs_detailed_validation=True, **overrides)
