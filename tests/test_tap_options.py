"""The commands' options set the config key their help names, and only real keys."""

from __future__ import annotations

import pytest

from connscale.app import tap_client, tap_observe, tap_server
from connscale.app.startup import ConfigOptions, keys_in_help, repeat_option
from connscale.config.loader import ConfigError, load_config

TAPS = [tap_client.Options, tap_server.Options, tap_observe.Options]


def test_the_key_is_read_from_the_help_an_alias_once_and_no_bracket_no_key() -> None:
    opt_port = repeat_option("port", "Port(s) [server.ports].")
    methods = {"opt_port": opt_port, "opt_p": opt_port, "opt_plain": repeat_option("plain", "No key here."),
               "not_an_option": "[a.b]"}
    rows = [["rate", "r", None, "Connects per second [client.rate, default 2000]."],
            ["label", None, None, "A name (default observer-<hostname>)."],
            ["url", "u", None, "A URL: raw://, tls:// [client.url]."],
            ["odd", None, None, None]]
    assert keys_in_help(rows, methods) == {"rate": "client.rate", "url": "client.url", "port": "server.ports"}


def test_a_subclass_gets_its_keys_from_its_own_help() -> None:
    class Options(ConfigOptions):
        optParameters = ConfigOptions.optParameters + [["rate", "r", None, "Rate [client.rate, default 2]."]]
        repeatable = ("source-ip",)
        opt_source_ip = repeat_option("source-ip", "Source address(es); repeatable [client.source_ips].")

    options = Options()
    options.parseOptions(["--rate", "7", "--source-ip", "127.0.0.2", "--source-ip", "127.0.0.3"])
    assert options.overrides() == {"client.rate": "7", "client.source_ips": "127.0.0.2,127.0.0.3"}


@pytest.mark.parametrize("options", TAPS, ids=lambda o: o.__module__)
def test_every_key_a_command_sets_is_a_config_key(options: type[ConfigOptions]) -> None:
    assert options.keys, "no option names its config key in its help"
    for option, key in options.keys.items():
        try:
            load_config(None, {key: "not-a-value-of-any-key"})
        except ConfigError as e:
            assert "unknown key" not in str(e), f"--{option} names {key}: {e}"


def test_the_servers_options_reach_their_keys() -> None:
    options = tap_server.Options()
    options.parseOptions(["-p", "8989", "--port", "8990-8991", "--console", "none", "--backlog", "64",
                          "--record-dir", "/tmp/x"])
    assert options.overrides() == {"server.ports": "8989,8990-8991", "control.console": "none",
                                   "server.backlog": "64"}


def test_the_clients_and_the_observers_options_reach_their_keys() -> None:
    client = tap_client.Options()
    client.parseOptions(["--per-route-max", "9", "--status-interval", "2", "--secret-file", "s", "-m", "h:1"])
    assert client.overrides() == {"client.per_route_max": "9", "client.status_interval": "2",
                                  "control.secret_file": "s", "client.master": "h:1"}
    observer = tap_observe.Options()
    observer.parseOptions(["--master", "h:1", "--pid", "5", "--label", "x"])
    assert observer.overrides() == {"client.master": "h:1"}
