"""Tests for the config (connscale.config: settings, loader, values, addresses): parsers, every key's validation, error collection, overrides."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from connscale.config.addresses import parse_hostport, parse_ips, parse_ports
from connscale.config.loader import ConfigError, load_config, parse_config
from connscale.config.settings import (
    ClientHost,
    ClientSettings,
    Config,
    ControlSettings,
    RunSettings,
    ScenarioSettings,
    ServerSettings,
)
from connscale.config.values import parse_duration

REPO = Path(__file__).resolve().parent.parent


def problems(data: object = None, overrides: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, overrides or {})
    return info.value.problems


def only_problem(data: object = None, overrides: dict | None = None) -> str:
    found = problems(data, overrides)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- public parsers

@pytest.mark.parametrize("spec, expected", [
    (8989, (8989,)),
    ("8989", (8989,)),
    (" 8989 ", (8989,)),
    ("8989-8992", (8989, 8990, 8991, 8992)),
    ("8989 - 8990", (8989, 8990)),
    ("8989,8990", (8989, 8990)),
    ("9000,8989-8990", (9000, 8989, 8990)),   # order is kept
    ([8989, "9000-9001"], (8989, 9000, 9001)),
    (("1", 65535), (1, 65535)),
    ("1-1024", tuple(range(1, 1025))),        # exactly the maximum
    ("8989,", (8989,)),                       # stray commas are harmless
])
def test_parse_ports_ok(spec, expected):
    assert parse_ports(spec) == expected


@pytest.mark.parametrize("spec, message", [
    (0, "port 0 out of range 1..65535"),
    ("65536", "port 65536 out of range 1..65535"),
    ("8992-8989", "port range 8992-8989 is reversed"),
    ("1-1025", "too many ports (more than 1024)"),
    ("1-65535", "too many ports"),
    (["1-1000", "2000-2100"], "too many ports"),
    ("8989,8989", "duplicate port 8989"),
    ("8989-8992,8990", "duplicate port 8990"),
    ("", "no ports given"),
    ([], "no ports given"),
    ("abc", "expected a port or a range like 8989-8992, got 'abc'"),
    ("-5", "got '-5'"),
    ("89.5", "got '89.5'"),
    (True, "got True"),
    (None, "got null"),
    ([[8989]], "got a list"),
    (8989.0, "got 8989.0"),
])
def test_parse_ports_bad(spec, message):
    with pytest.raises(ValueError, match=None) as info:
        parse_ports(spec)
    assert message in str(info.value)


@pytest.mark.parametrize("spec, expected", [
    ("127.0.0.2", ("127.0.0.2",)),
    ("127.0.0.2-127.0.0.4", ("127.0.0.2", "127.0.0.3", "127.0.0.4")),
    ("127.0.0.2-4", ("127.0.0.2", "127.0.0.3", "127.0.0.4")),          # last octet shorthand
    ("10.0.0.255-1.0", ("10.0.0.255", "10.0.1.0")),                    # last two octets
    ("10.0.0.255-10.0.1.1", ("10.0.0.255", "10.0.1.0", "10.0.1.1")),   # spans an octet
    ("127.0.0.2-127.0.0.3,127.0.0.20", ("127.0.0.2", "127.0.0.3", "127.0.0.20")),
    (["127.0.0.2", "127.0.0.5-6"], ("127.0.0.2", "127.0.0.5", "127.0.0.6")),
    ("::1", ("::1",)),
    ("fd00::1-fd00::3", ("fd00::1", "fd00::2", "fd00::3")),
    ("fd00:0:0::0001", ("fd00::1",)),                                  # canonical form
    ("", ()),
    ([], ()),
    ("10.0.0.0-10.0.15.255", tuple(f"10.0.{i // 256}.{i % 256}" for i in range(4096))),
])
def test_parse_ips_ok(spec, expected):
    assert parse_ips(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("127.0.0.256", "expected an IP address, got '127.0.0.256'"),
    ("localhost", "expected an IP address"),
    ("127.0.0.9-127.0.0.2", "address range 127.0.0.9-127.0.0.2 is reversed"),
    ("127.0.0.2-300", "expected an IP address, got '127.0.0.300'"),
    ("127.0.0.1-::2", "mixes IPv4 and IPv6"),
    ("10.0.0.0-10.0.16.0", "too many addresses (more than 4096)"),
    ("0.0.0.0-255.255.255.255", "too many addresses"),   # must fail fast, not expand 2**32
    ("::-ffff::", "too many addresses"),
    (["10.0.0.0-10.0.15.255", "10.1.0.0"], "too many addresses"),
    ("127.0.0.2,127.0.0.1-3", "duplicate address 127.0.0.2"),
    (2130706433, "got 2130706433"),
    (None, "got null"),
    ({"a": 1}, "got a dict"),
])
def test_parse_ips_bad(spec, message):
    with pytest.raises(ValueError) as info:
        parse_ips(spec)
    assert message in str(info.value)


@pytest.mark.parametrize("spec, expected", [
    ("127.0.0.1:8989", ("127.0.0.1", (8989,))),
    ("127.0.0.1:8989-8991", ("127.0.0.1", (8989, 8990, 8991))),
    ("host.example:8989,8990", ("host.example", (8989, 8990))),
    ("localhost:1", ("localhost", (1,))),
    ("[::1]:8989", ("::1", (8989,))),
    ("[fd00:0::1]:80-81", ("fd00::1", (80, 81))),
    (" my_host-1:22 ", ("my_host-1", (22,))),
])
def test_parse_hostport_ok(spec, expected):
    assert parse_hostport(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("127.0.0.1", "expected HOST:PORT, got '127.0.0.1'"),
    (":8989", "expected HOST:PORT"),
    ("::1:8989", "IPv6 addresses need brackets"),
    ("[::1]8989", "expected [IPV6]:PORT"),
    ("[::1", "expected [IPV6]:PORT"),
    ("[127.0.0.1]:80", "brackets are only for IPv6"),
    ("[nothost]:80", "expected an IP address"),
    ("bad host:80", "expected a host name or IP address, got 'bad host'"),
    ("10.0.0.300:80", "expected a host name or IP address"),
    ("-bad:80", "expected a host name"),
    ("host:0", "port 0 out of range"),
    ("host:", "no ports given"),
    ("host:x", "expected a port"),
    (8989, "expected HOST:PORT, got 8989"),
])
def test_parse_hostport_bad(spec, message):
    with pytest.raises(ValueError) as info:
        parse_hostport(spec)
    assert message in str(info.value)


@pytest.mark.parametrize("value, seconds", [
    (5, 5.0), (2.5, 2.5), ("5", 5.0), ("2.5", 2.5), ("5s", 5.0), ("500ms", 0.5),
    ("2m", 120.0), ("1h", 3600.0), (" 1.5 s ", 1.5), (".5s", 0.5), ("0", 0.0), (-1, -1.0),
])
def test_parse_duration_ok(value, seconds):
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize("value", ["abc", "5 sec", "5d", "s", "", "inf", "nan", True, None, [5], "-5s"])
def test_parse_duration_bad(value):
    with pytest.raises(ValueError, match="expected a duration like 5, 5s, 500ms or 2m"):
        parse_duration(value)


# ---------------------------------------------------------------- defaults

def test_defaults_match_spec():
    config = load_config(None)
    assert config == parse_config({}) == parse_config(None) == Config()
    assert config.server == ServerSettings("127.0.0.1", (8989,), 4096, "line", "auto", 5.0, 1024)
    assert config.client == ClientSettings(
        "127.0.0.1", (8989,), 1000, 2000.0, 5.0, 1.0, (), "line", "auto", 14000, 5.0, None, None)
    assert config.control == ControlSettings(
        "tcp:8790:interface=127.0.0.1", None, None, None, "ssh", "tcp:8791:interface=127.0.0.1", None, "admin")
    assert config.clients == {}
    assert config.scenario == ScenarioSettings(50000, 2000.0, 5, 5.0, 10.0, 0, 110.0)
    assert config.run == RunSettings("runs")


def test_settings_are_frozen():
    config = Config()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.client.connections = 5  # type: ignore[misc]
    hash(config.server), hash(config.client), hash(config)  # usable as dict keys / in sets


def test_null_sections_mean_defaults():
    assert parse_config({"server": None, "client": None, "clients": None}) == Config()


# ---------------------------------------------------------------- every key, via overrides

def setting(config: Config, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


@pytest.mark.parametrize("dotted, raw, expected", [
    ("server.interface", "0.0.0.0", "0.0.0.0"),
    ("server.interface", "::", "::"),
    ("server.interface", "10.1.2.3", "10.1.2.3"),
    ("server.ports", "8989-8990", (8989, 8990)),
    ("server.ports", [9000], (9000,)),
    ("server.backlog", "1", 1),
    ("server.backlog", 1_000_000, 1_000_000),
    ("server.framing", "raw", "raw"),
    ("server.workers", "auto", "auto"),
    ("server.workers", "0", 0),
    ("server.workers", 256, 256),
    ("server.status_interval", "500ms", 0.5),
    ("server.max_line", "16", 16),
    ("server.max_line", 65536, 65536),
    ("client.connections", "5", 5),
    ("client.connections", 0, 0),
    ("client.connections", "1e6", 1_000_000),
    ("client.connections", 100_000_000, 100_000_000),
    ("client.connections", 7.0, 7),
    ("client.rate", "2.5", 2.5),
    ("client.rate", 10, 10.0),
    ("client.interval", "2m", 120.0),
    ("client.timeout", "250ms", 0.25),
    ("client.source_ips", "127.0.0.2-127.0.0.3,127.0.0.20", ("127.0.0.2", "127.0.0.3", "127.0.0.20")),
    ("client.framing", "raw", "raw"),
    ("client.workers", "3", 3),
    ("client.per_route_max", "1", 1),
    ("client.close", "rst", "rst"),
    ("client.close", "fin", "fin"),
    ("client.per_route_max", 65535, 65535),
    ("client.status_interval", 1, 1.0),
    ("client.master", "hub.example:8790", ("hub.example", 8790)),
    ("client.master", "[::1]:8790", ("::1", 8790)),
    ("client.name", "agent-1.lab_2", "agent-1.lab_2"),
    ("client.name", "x" * 64, "x" * 64),
    ("control.listen", "tcp:0", "tcp:0"),
    ("control.listen", "tcp:port=8790:interface=\\:\\:1", "tcp:port=8790:interface=\\:\\:1"),
    ("control.listen", "ssl:8790:privateKey=k.pem", "ssl:8790:privateKey=k.pem"),
    ("control.listen", "unix:/tmp/connscale.sock", "unix:/tmp/connscale.sock"),
    ("control.secret", "12345678", "12345678"),
    ("control.console", "telnet", "telnet"),
    ("control.console", "none", "none"),
    ("control.console_listen", "tcp:9000", "tcp:9000"),
    ("control.console_keys", "/etc/keys", "/etc/keys"),
    ("control.console_keys", "~/keys", os.path.expanduser("~/keys")),
    ("control.console_user", "root", "root"),
    ("scenario.target", "1", 1),
    ("scenario.rate", "0.5", 0.5),
    ("scenario.steps", 1000, 1000),
    ("scenario.hold", "0", 0.0),
    ("scenario.final_hold", "0s", 0.0),
    ("scenario.max_failures", "10", 10),
    ("scenario.time_limit", "1h", 3600.0),
    ("run.dir", "/tmp/runs", "/tmp/runs"),
    ("run.dir", Path("out"), "out"),
])
def test_key_accepts(dotted, raw, expected):
    assert setting(parse_config({}, {dotted: raw}), dotted) == expected


def test_client_server_splits_into_host_and_ports():
    client = parse_config({"client": {"server": "10.0.0.1:9000-9002"}}).client
    assert (client.server_host, client.server_ports) == ("10.0.0.1", (9000, 9001, 9002))
    assert client.timeout == 1.0  # untouched neighbours keep defaults


@pytest.mark.parametrize("dotted, raw, message", [
    ("server.interface", "localhost", "expected an IP address, got 'localhost'"),
    ("server.interface", 127, "expected an IP address, got 127"),
    ("server.ports", "0", "port 0 out of range 1..65535"),
    ("server.backlog", "0", "must be between 1 and 1000000, got 0"),
    ("server.backlog", 1_000_001, "must be between 1 and 1000000, got 1000001"),
    ("server.backlog", "2.5", "expected an integer, got '2.5'"),
    ("server.backlog", True, "expected an integer, got True"),
    ("server.framing", "LINE", "expected one of line|raw|websocket, got 'LINE'"),
    ("server.workers", 257, "expected 'auto' or an integer between 0 and 256, got 257"),
    ("server.workers", "-1", "got '-1'"),
    ("server.workers", "many", "got 'many'"),
    ("server.status_interval", "0s", "must be > 0 seconds, got 0"),
    ("server.status_interval", "-1", "must be > 0 seconds, got -1"),
    ("server.max_line", 15, "must be between 16 and 65536, got 15"),
    ("server.max_line", 65537, "must be between 16 and 65536, got 65537"),
    ("client.server", "localhost", "expected HOST:PORT, got 'localhost'"),
    ("client.connections", "abc", "expected an integer, got 'abc'"),
    ("client.connections", -1, "must be between 0 and 100000000, got -1"),
    ("client.connections", 100_000_001, "must be between 0 and 100000000, got 100000001"),
    ("client.connections", [1], "expected an integer, got a list"),
    ("client.rate", "fast", "expected a number, got 'fast'"),
    ("client.rate", 0, "must be > 0, got 0"),
    ("client.rate", "inf", "expected a number, got 'inf'"),
    ("client.rate", 10**400, "expected a number"),
    ("client.interval", "0", "must be > 0 seconds"),
    ("client.timeout", "soon", "expected a duration like 5, 5s, 500ms or 2m, got 'soon'"),
    ("client.source_ips", "127.0.0.300", "expected an IP address"),
    ("client.framing", "json", "expected one of line|raw, got 'json'"),
    ("client.workers", 1.5, "got 1.5"),
    ("client.per_route_max", 0, "must be between 1 and 65535, got 0"),
    ("client.close", "reset", "expected one of fin|rst, got 'reset'"),
    ("client.per_route_max", 65536, "must be between 1 and 65535, got 65536"),
    ("client.status_interval", "0ms", "must be > 0 seconds"),
    ("client.master", "hub:8790-8791", "expected exactly one port, got 2"),
    ("client.master", "hub", "expected HOST:PORT"),
    ("client.name", "bad name", "expected 1-64 characters from [A-Za-z0-9_.-], got 'bad name'"),
    ("client.name", "x" * 65, "expected 1-64 characters"),
    ("client.name", "", "expected 1-64 characters"),
    ("client.name", 5, "got 5"),
    ("control.listen", "8790", "expected a server endpoint starting with tcp:, ssl: or unix:, got '8790'"),
    ("control.listen", "tcp6:8790", "starting with tcp:, ssl: or unix:"),
    ("control.listen", "tcp:", "endpoint needs a port 0..65535"),
    ("control.listen", "tcp:http", "endpoint needs a port 0..65535"),
    ("control.listen", "tcp:70000", "endpoint needs a port 0..65535"),
    ("control.listen", "unix:", "unix endpoint needs a path"),
    ("control.listen", "", "expected a non-empty string"),
    ("control.secret", "short", "must be at least 8 characters long"),
    ("control.secret", 123456789, "expected a string (quote it in YAML)"),
    ("control.console", "http", "expected one of ssh|none, got 'http'"),
    ("control.console", False, "got False"),
    ("control.console_listen", "9000", "expected a server endpoint"),
    ("control.console_keys", "", "expected a non-empty string"),
    ("control.console_user", " ", "expected a non-empty string"),
    ("control.console_user", 7, "expected a non-empty string, got 7"),
    ("scenario.target", 0, "must be between 1 and 100000000, got 0"),
    ("scenario.rate", -1, "must be > 0, got -1"),
    ("scenario.steps", 0, "must be between 1 and 1000, got 0"),
    ("scenario.steps", 1001, "must be between 1 and 1000, got 1001"),
    ("scenario.hold", "-1s", "expected a duration"),
    ("scenario.hold", -0.5, "must be >= 0 seconds, got -0.5"),
    ("scenario.final_hold", -1, "must be >= 0 seconds, got -1"),
    ("scenario.max_failures", -1, "must be >= 0, got -1"),
    ("scenario.time_limit", 0, "must be > 0 seconds, got 0"),
    ("run.dir", "", "expected a non-empty string, got ''"),
    ("run.dir", 5, "expected a non-empty string, got 5"),
])
def test_key_rejects(dotted, raw, message):
    problem = only_problem({}, {dotted: raw})
    assert problem.startswith(f"{dotted}: ") and message in problem


def test_explicit_null_only_allowed_for_optional_keys():
    assert parse_config({"client": {"master": None, "name": None}}).client.master is None
    assert only_problem({"client": {"connections": None}}) == "client.connections: expected an integer, got null"


def test_secret_never_echoed():
    for value in ("hunter2", ["hunter2secret"]):
        message = only_problem({"control": {"secret": value}})
        assert "hunter2" not in message


def test_long_values_are_truncated_in_messages():
    message = only_problem({"client": {"connections": "x" * 500}})
    assert len(message) < 120


# ---------------------------------------------------------------- clients

def test_clients():
    config = parse_config({"clients": {
        "web1": {"host": "10.0.0.5", "user": "bench", "port": "2222", "ssh_options": ["-o", "BatchMode=yes"],
                 "python": "/opt/venv/bin/python", "workers": 4, "source_ips": "10.0.1.1-3",
                 "env": {"PYTHONHASHSEED": 0, "MODE": "fast", "RATIO": 1.5}},
        "web2": {"host": "web2.lab"},
    }})
    assert config.clients["web1"] == ClientHost(
        name="web1", host="10.0.0.5", user="bench", port=2222, ssh_options=("-o", "BatchMode=yes"),
        python="/opt/venv/bin/python", workers=4, source_ips=("10.0.1.1", "10.0.1.2", "10.0.1.3"),
        env={"PYTHONHASHSEED": "0", "MODE": "fast", "RATIO": "1.5"})
    assert config.clients["web2"] == ClientHost(name="web2", host="web2.lab")
    assert config.clients["web2"].port == 22 and config.clients["web2"].python == "python3"
    assert list(config.clients) == ["web1", "web2"]


def test_client_ssh_options_string_is_shell_split():
    config = parse_config({}, {"clients.a.host": "h", "clients.a.ssh_options": "-o 'ProxyJump=a b' -4"})
    assert config.clients["a"].ssh_options == ("-o", "ProxyJump=a b", "-4")


@pytest.mark.parametrize("entry, expected", [
    ({}, ["clients.c.host: required"]),
    (None, ["clients.c.host: required"]),
    ("10.0.0.1", ["clients.c: expected a mapping, got '10.0.0.1'"]),
    ({"host": "a b"}, ["clients.c.host: expected a host name or IP address, got 'a b'"]),
    ({"host": "h", "port": 0}, ["clients.c.port: must be between 1 and 65535, got 0"]),
    ({"host": "h", "user": ""}, ["clients.c.user: expected a user name (letters, digits, '.', '_', '-'; "
                                 "not starting with '-'), got ''"]),
    # A user reaches ssh's command line: one starting with '-' would be read as an option.
    ({"host": "h", "user": "-oProxyCommand=touch /tmp/x"},
     ["clients.c.user: expected a user name (letters, digits, '.', '_', '-'; not starting with '-'), "
      "got '-oProxyCommand=touch /tmp/x'"]),
    ({"host": "h", "env": {"A": "one\ntwo"}}, ["clients.c.env: value of A must be one line"]),
    ({"host": "h", "ssh_options": [1]}, ["clients.c.ssh_options: expected a list of strings, got a list"]),
    ({"host": "h", "ssh_options": "'unclosed"}, ["clients.c.ssh_options: cannot split \"'unclosed\": No closing quotation"]),
    ({"host": "h", "python": None}, ["clients.c.python: expected a non-empty string, got null"]),
    ({"host": "h", "workers": "x"}, ["clients.c.workers: expected 'auto' or an integer between 0 and 256, got 'x'"]),
    ({"host": "h", "source_ips": "x"}, ["clients.c.source_ips: expected an IP address, got 'x'"]),
    ({"host": "h", "env": ["A=1"]}, ["clients.c.env: expected a mapping of NAME: value, got a list"]),
    ({"host": "h", "env": {"A-B": "1"}}, ["clients.c.env: invalid environment variable name 'A-B'"]),
    ({"host": "h", "env": {"A": None}}, ["clients.c.env: value of A must be a string, got null"]),
    ({"host": "h", "env": {"A": True}}, ["clients.c.env: value of A must be a string, got True"]),
    ({"hots": "h"}, ["clients.c.hots: unknown key (did you mean 'host'?)", "clients.c.host: required"]),
    ({"host": "h", "name": "x"}, ["clients.c.name: unknown key"]),  # the name is the mapping key
])
def test_client_problems(entry, expected):
    assert problems({"clients": {"c": entry}}) == expected


def test_client_names_and_section_type():
    assert problems({"clients": {"a b": {"host": "h"}, 7: {"host": "h"}}}) == [
        "clients.a b: invalid client name: expected 1-64 characters from [A-Za-z0-9_.-], got 'a b'",
        "clients.7: invalid client name: expected 1-64 characters from [A-Za-z0-9_.-], got 7",
    ]
    assert problems({"clients": ["web1"]}) == [
        "clients: expected a mapping of name -> host settings, got a list"]


# ---------------------------------------------------------------- unknown keys, structure

def test_unknown_keys_with_suggestions():
    assert problems({"clinet": {}, "sever": {}, "bogus": 1, "client": {"conections": 5, "zzz": 1},
                     "scenario": {"targte": 1}}) == [
        "clinet: unknown key (did you mean 'client'?)",
        "sever: unknown key (did you mean 'server'?)",
        "bogus: unknown key",
        "client.conections: unknown key (did you mean 'connections'?)",
        "client.zzz: unknown key",
        "scenario.targte: unknown key (did you mean 'target'?)",
    ]


def test_non_string_keys_are_unknown_not_crashes():
    assert problems({"server": {1: 2, None: 3}}) == ["server.1: unknown key", "server.None: unknown key"]


def test_attribute_names_that_are_not_yaml_keys_are_unknown():
    assert only_problem({"client": {"server_host": "h"}}).startswith("client.server_host: unknown key")


@pytest.mark.parametrize("section", ["server", "client", "control", "scenario", "run"])
def test_section_must_be_mapping(section):
    assert only_problem({section: [1]}) == f"{section}: expected a mapping, got a list"


@pytest.mark.parametrize("data, kind", [([1, 2], "a list"), ("text", "'text'"), (5, "5")])
def test_top_level_must_be_mapping(data, kind):
    assert only_problem(data) == f"config: top level must be a mapping, got {kind}"


def test_all_errors_at_once():
    with pytest.raises(ConfigError) as info:
        parse_config({
            "scenario": {"steps": 0},
            "server": {"backlog": 0, "framing": "udp"},
            "client": {"rate": "fast", "conections": 5, "timeout": "1000s"},
            "control": {"secret": "short"},
            "clients": {"w": {}},
        }, {"run.dir": ""})
    # Sections in spec order, keys in file order, cross-key checks last.
    assert str(info.value).splitlines() == info.value.problems == [
        "server.backlog: must be between 1 and 1000000, got 0",
        "server.framing: expected one of line|raw|websocket, got 'udp'",
        "client.rate: expected a number, got 'fast'",
        "client.conections: unknown key (did you mean 'connections'?)",
        "control.secret: must be at least 8 characters long",
        "clients.w.host: required",
        "scenario.steps: must be between 1 and 1000, got 0",
        "run.dir: expected a non-empty string, got ''",
        "client.timeout: must be less than 100 * client.interval (500s), got 1000s",
    ]


def test_config_error_pickles():
    error = pickle.loads(pickle.dumps(ConfigError(["a: b", "c: d"])))
    assert error.problems == ["a: b", "c: d"] and str(error) == "a: b\nc: d"


# ---------------------------------------------------------------- cross-checks

def test_timeout_must_be_below_100_intervals():
    assert parse_config({"client": {"timeout": 49.9, "interval": "500ms"}}).client.timeout == 49.9
    assert only_problem({"client": {"timeout": 50, "interval": "500ms"}}) == (
        "client.timeout: must be less than 100 * client.interval (50s), got 50s")


def test_cross_check_skipped_when_its_input_is_invalid():
    # interval is bad, so comparing timeout against the default interval would mislead.
    assert problems({"client": {"timeout": 1000, "interval": "x"}}) == [
        "client.interval: expected a duration like 5, 5s, 500ms or 2m, got 'x'"]


def test_secret_and_secret_file_exclusive(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cr3t-s3cr3t\n")
    control = parse_config({"control": {"secret_file": str(secret_file)}}).control
    assert control.secret_file == str(secret_file) and control.secret is None
    assert only_problem({"control": {"secret": "12345678", "secret_file": str(secret_file)}}) == (
        "control.secret_file: cannot be used together with control.secret")


def test_secret_file_must_exist_and_be_a_readable_file(tmp_path):
    missing = tmp_path / "nope"
    assert only_problem({}, {"control.secret_file": str(missing)}) == (
        f"control.secret_file: no such file: {missing}")
    assert only_problem({}, {"control.secret_file": str(tmp_path)}) == (
        f"control.secret_file: is a directory, not a file: {tmp_path}")


def test_secret_file_unreadable(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("x" * 10)
    secret_file.chmod(0)
    check = ("import sys; from connscale.config.loader import ConfigError, parse_config\n"
             "try:\n    parse_config({}, {'control.secret_file': sys.argv[1]})\n"
             "except ConfigError as e:\n    print(e)\n")
    argv = [sys.executable, "-c", check, str(secret_file)]
    if os.geteuid() == 0:
        # Root reads anything; without these two capabilities it is held to the mode bits.
        argv = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == f"control.secret_file: not readable: {secret_file}"


def test_source_ips_family_must_match_server_literal():
    assert only_problem({"client": {"server": "[::1]:8989", "source_ips": "127.0.0.2"}}) == (
        "client.source_ips: 127.0.0.2 cannot reach IPv6 client.server ::1")
    # Host names resolve later; nothing to compare yet.
    parse_config({"client": {"server": "localhost:8989", "source_ips": "::1"}})


@pytest.mark.parametrize("data, expected", [
    ({"control": {"console_listen": "tcp:8790:interface=127.0.0.1"}},
     ["control.console_listen: port 8790 is also used by control.listen"]),
    ({"control": {"console_listen": "tcp:8790"}},   # no interface = all interfaces
     ["control.console_listen: port 8790 is also used by control.listen"]),
    ({"server": {"ports": "8780-8800"}}, ["server.ports: port 8790 is also used by control.listen",
                                          "server.ports: port 8791 is also used by control.console_listen"]),
    ({"server": {"interface": "0.0.0.0", "ports": 8791}},
     ["server.ports: port 8791 is also used by control.console_listen"]),
])
def test_listener_port_clashes(data, expected):
    assert problems(data) == expected


@pytest.mark.parametrize("data", [
    {"control": {"console": "none", "console_listen": "tcp:8790:interface=127.0.0.1"}},  # console off
    {"control": {"console_listen": "tcp:8790:interface=10.0.0.1"}},                     # other interface
    {"control": {"listen": "tcp:0", "console_listen": "tcp:0"}},                        # ephemeral
    {"control": {"listen": "unix:/tmp/c.sock"}, "server": {"ports": 8790}},
    {"server": {"interface": "10.0.0.1", "ports": 8790}},
    {"server": {"workers": 0, "ports": 8790}},   # single process: no hub, no controller bound
])
def test_listener_no_clash(data):
    parse_config(data)


# ---------------------------------------------------------------- overrides

def test_overrides_parse_command_line_strings_over_file():
    data = {"client": {"connections": 10, "rate": 5}}
    config = parse_config(data, {"client.connections": "5", "client.rate": "2.5", "client.interval": "5s",
                                 "server.ports": "8989-8990", "client.source_ips": "127.0.0.2-127.0.0.3",
                                 "scenario.hold": None})
    assert (config.client.connections, config.client.rate, config.client.interval) == (5, 2.5, 5.0)
    assert config.server.ports == (8989, 8990)
    assert config.client.source_ips == ("127.0.0.2", "127.0.0.3")
    assert config.scenario.hold == 5.0
    assert data == {"client": {"connections": 10, "rate": 5}}  # caller's data untouched


def test_override_none_means_not_given():
    config = parse_config({"client": {"connections": 10, "master": "hub:1"}},
                          {"client.connections": None, "client.master": None})
    assert config.client.connections == 10 and config.client.master == ("hub", 1)


def test_overrides_accept_typed_values():
    config = parse_config({}, {"client.connections": 7, "client.source_ips": ["127.0.0.2"],
                               "clients.w.host": "h", "clients.w.env.X": 1})
    assert config.client.connections == 7 and config.client.source_ips == ("127.0.0.2",)
    assert config.clients["w"].env == {"X": "1"}


def test_override_errors_use_the_same_rules():
    assert only_problem({}, {"client.connections": "abc"}) == "client.connections: expected an integer, got 'abc'"
    assert only_problem({}, {"client.conections": "5"}) == (
        "client.conections: unknown key (did you mean 'connections'?)")
    assert only_problem({}, {"clinet.connections": "5"}) == "clinet: unknown key (did you mean 'client'?)"
    assert only_problem({}, {"client..rate": "5"}) == "client..rate: invalid override key"


def test_override_under_non_mapping_reports_the_section():
    assert only_problem({"client": 5}, {"client.connections": "5"}) == "client: expected a mapping, got 5"


# ---------------------------------------------------------------- as_dict

def test_as_dict_is_json_and_round_trips(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("x" * 10)
    config = parse_config({
        "server": {"ports": "8989-8991,9000", "workers": 2},
        "client": {"server": "[::1]:8989-8991,9000", "source_ips": "::2-::3", "master": "hub:8790",
                   "name": "a1", "timeout": "500ms"},
        "control": {"secret_file": str(secret_file), "console": "telnet"},
        "clients": {"w": {"host": "h", "ssh_options": ["-4"], "env": {"A": "1"}}},
        "scenario": {"hold": 0},
    })
    plain = json.loads(json.dumps(config.as_dict()))
    assert list(plain) == ["server", "client", "control", "clients", "scenario", "run", "observe", "net"]
    assert plain["client"]["server"] == "[::1]:8989-8991,9000"
    assert plain["client"]["master"] == "hub:8790"
    assert plain["server"]["ports"] == [8989, 8990, 8991, 9000]
    assert plain["clients"] == {"w": {"host": "h", "user": None, "port": 22, "ssh_options": ["-4"],
                                      "python": "python3", "workers": "auto", "source_ips": [],
                                      "env": {"A": "<redacted>"}, "master": None, "observe": None}}
    # The environment's values may be secrets (a token for the remote side): written redacted.
    assert config.as_dict(redact_secrets=False)["clients"]["w"]["env"] == {"A": "1"}
    plain["clients"]["w"]["env"] = {"A": "1"}
    assert parse_config(plain) == config
    assert parse_config(json.loads(json.dumps(Config().as_dict()))) == Config()


def test_as_dict_redacts_secret_by_default():
    config = parse_config({"control": {"secret": "hunter2hunter2"}})
    assert config.as_dict()["control"]["secret"] == "<redacted>"
    assert "hunter2" not in json.dumps(config.as_dict())
    assert config.as_dict(redact_secrets=False)["control"]["secret"] == "hunter2hunter2"
    assert parse_config(config.as_dict(redact_secrets=False)) == config


# ---------------------------------------------------------------- load_config (files)

def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connscale.yaml"
    path.write_text(text)
    return path


def load_problems(path, overrides=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(str(path), overrides or {})
    return info.value.problems


def test_load_file_with_overrides(tmp_path):
    path = write(tmp_path, """
server:
  ports: 8989-8990
client:
  server: 127.0.0.1:8989-8990
  connections: 20000
  interval: 2s
  source_ips: [127.0.0.2-127.0.0.9, 127.0.0.20]
clients:
  lab1: {host: 10.0.0.7, python: /opt/venv/bin/python}
scenario:
  hold: 500ms
""")
    config = load_config(str(path), {"client.connections": "5", "scenario.steps": None})
    assert config.server.ports == (8989, 8990)
    assert config.client.server_ports == (8989, 8990)
    assert config.client.connections == 5
    assert config.client.interval == 2.0
    assert len(config.client.source_ips) == 9
    assert config.clients["lab1"].python == "/opt/venv/bin/python"
    assert config.scenario.hold == 0.5 and config.scenario.steps == 5
    assert load_config(path) == load_config(str(path), {"client.connections": None})  # PathLike ok


def test_load_empty_and_comment_only_files(tmp_path):
    assert load_config(str(write(tmp_path, ""))) == Config()
    assert load_config(str(write(tmp_path, "# nothing\nclient:\n  # connections: 5\n"))) == Config()


def test_load_missing_file(tmp_path):
    assert load_problems(tmp_path / "nope.yaml") == [f"config: no such file: {tmp_path / 'nope.yaml'}"]


def test_load_directory(tmp_path):
    [message] = load_problems(tmp_path)
    assert message.startswith(f"config: cannot read {tmp_path}: ")


def test_load_not_utf8(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"client: \xff\xfe\n")
    assert load_problems(path) == [f"config: {path} is not UTF-8 text"]


def test_load_yaml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, "client:\n  connections: 5\n  rate: [1, 2\n")
    [message] = load_problems(path)
    assert message.startswith(f"config: {path}: invalid YAML at line ")
    assert "column" in message and "\n" not in message


def test_load_yaml_tab_indent_error(tmp_path):
    path = write(tmp_path, "client:\n\tconnections: 5\n")
    [message] = load_problems(path)
    assert message.startswith(f"config: {path}: invalid YAML at line 2, column 1: ")


def test_hostile_yaml_is_a_config_error_not_a_traceback(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(deep)
    assert e.value.problems == [f"config: {deep}: nested too deeply"]
    huge = tmp_path / "huge.yaml"
    huge.write_text("scenario: {target: " + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError) as e:
        load_config(huge)
    assert e.value.problems == [f"config: {huge}: invalid value: a number too long to be one"]
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ConfigError) as e:
        load_config(big)
    assert "larger than 1024 KiB" in str(e.value)
    with pytest.raises(ConfigError) as e:
        parse_config({"scenario": {"target": 10**12}})
    assert str(e.value) == "scenario.target: must be between 1 and 100000000, got 1000000000000"


def test_load_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path, "client:\n  connections: 5\n  rate: 1\n  connections: 6\n")
    assert load_problems(path) == [
        f"config: {path}: invalid YAML at line 4, column 3: found duplicate key 'connections'"]


def test_load_yaml_merge_keys_still_work(tmp_path):
    # `<<:` legitimately repeats keys; the duplicate-key check must not trip on it.
    path = write(tmp_path, "clients:\n  a: &base {host: h, port: 2222}\n  b:\n    <<: *base\n    port: 2200\n")
    config = load_config(str(path))
    assert (config.clients["a"].port, config.clients["b"].port, config.clients["b"].host) == (2222, 2200, "h")


def test_load_multiple_documents_is_an_error(tmp_path):
    [message] = load_problems(write(tmp_path, "client: {}\n---\nserver: {}\n"))
    assert "invalid YAML at line" in message


def test_load_top_level_list(tmp_path):
    assert load_problems(write(tmp_path, "- client\n")) == ["config: top level must be a mapping, got a list"]


def test_load_reports_all_problems(tmp_path):
    path = write(tmp_path, "client:\n  conections: 5\n  rate: fast\n")
    assert load_problems(path, {"server.backlog": "abc"}) == [
        "server.backlog: expected an integer, got 'abc'",
        "client.conections: unknown key (did you mean 'connections'?)",
        "client.rate: expected a number, got 'fast'",
    ]


def test_yaml_scalars_keep_meaning(tmp_path):
    # YAML 1.1 turns `off` into False: it must be reported, not taken as "none".
    path = write(tmp_path, "control:\n  console: off\n")
    assert load_problems(path) == ["control.console: expected one of ssh|none, got False"]


def test_shipped_config_loads():
    load_config(str(REPO / "connscale.yaml"))


def test_a_fleets_agents_and_the_local_agent():
    cfg = parse_config({"scenario": {"agents": ["east", "west"], "local_agent": True}})
    assert cfg.scenario.agents == ("east", "west") and cfg.scenario.local_agent is True
    assert parse_config({}).scenario.local_agent is None  # auto
    assert parse_config({"scenario": {"local_agent": "auto"}}).as_dict()["scenario"]["local_agent"] == "auto"
    for bad, problem in (
        ({"agents": "east"}, "scenario.agents: expected a list of agent names, got 'east'"),
        ({"agents": ["east", "east"]}, "scenario.agents: 'east' is named twice"),
        ({"local_agent": "sometimes"}, "scenario.local_agent:"),
    ):
        with pytest.raises(ConfigError) as e:
            parse_config({"scenario": bad})
        assert len(e.value.problems) == 1 and e.value.problems[0].startswith(problem), e.value.problems
    with pytest.raises(ConfigError) as e:
        parse_config({"clients": {"east": {"host": "198.18.0.2"}}, "scenario": {"agents": ["east"]}})
    assert e.value.problems == ["scenario.agents: east is also under clients: (launched over ssh); name it in one "
                                "place"]
