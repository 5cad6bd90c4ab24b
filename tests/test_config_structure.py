"""config.structure.KeyTable: cattrs' collected failures as connscale's one line per key."""

from __future__ import annotations

import pytest

from connscale.config.structure import KeyTable
from connscale.config.values import Invalid, InvalidKeys, choice, int_between


def nested(value: object) -> object:
    raise InvalidKeys([("cert", "no such file: /x"), ("key", "unknown key")])


def buggy(value: object) -> object:
    raise TypeError("a parser's own bug")


TABLE = KeyTable("ExampleKeys", {"host": str, "port": int_between(1, 65535), "mode": choice("a", "b"),
                                 "tls": nested}, required=["host"])


def test_values_of_the_given_keys_only():
    given = TABLE.structure({"port": 80, "host": "h"})
    assert given.values == {"host": "h", "port": 80} and given.problems == [] and not given.failed


def test_problems_in_file_order_then_required():
    given = TABLE.structure({"mode": "c", "prot": 1, "port": 0, 7: None})
    assert given.problems == [
        ("mode", "expected one of a|b, got 'c'"),
        ("prot", "unknown key (did you mean 'port'?)"),
        ("port", "must be between 1 and 65535, got 0"),
        ("7", "unknown key"),
        ("host", "required"),
    ]
    assert given.failed == {"mode", "port"}
    assert given.values == {}  # the required host is missing: nothing to build


def test_a_bad_key_leaves_the_good_ones():
    given = TABLE.structure({"host": "h", "port": "x", "mode": "b"})
    assert given.values == {"host": "h", "mode": "b"} and given.failed == {"port"}


def test_a_nested_mapping_is_one_line_per_sub_key():
    given = TABLE.structure({"host": "h", "tls": {}})
    assert given.problems == [("tls.cert", "no such file: /x"), ("tls.key", "unknown key")]
    assert given.failed == {"tls"}


def test_a_parsers_bug_is_not_a_config_problem():
    with pytest.raises(TypeError, match="a parser's own bug"):
        KeyTable("BuggyKeys", {"x": buggy}).structure({"x": 1})


def test_a_retired_choice_parses_but_is_not_offered():
    parse = choice("ssh", "none", retired=("telnet",))
    assert parse("telnet") == "telnet"
    with pytest.raises(Invalid, match=r"^expected one of ssh\|none, got 'tty'$"):
        parse("tty")
