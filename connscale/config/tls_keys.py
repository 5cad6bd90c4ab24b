"""How YAML says TLS: ``client.tls`` and ``server.tls``, parsed into `config.tls`'s records.

The records and the checks of their files live in `config/tls.py`; here, the YAML forms
(``true``/``false``, ``auto``, a mapping of keys) and one problem per sub-key, named
``client.tls.<key>`` by the loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connscale.config.addresses import host_name
from connscale.config.structure import KeyTable
from connscale.config.tls import (
    ClientTLSSettings,
    ServerTLSSettings,
    certificate_problem,
    check_ca_file,
    check_cert_pair,
)
from connscale.config.values import (
    Invalid,
    InvalidKeys,
    boolean,
    describe,
    number_between,
    optional,
    parse_duration,
    readable_file,
)

__all__ = ["client_tls", "dump_client_tls", "dump_server_tls", "server_tls"]


_CLIENT_TLS_KEYS = KeyTable("ClientTLSKeys", {
    "enabled": boolean,
    "server_name": optional(host_name),
    "verify": boolean,
    "ca_file": optional(readable_file),
    "cert": optional(readable_file),
    "key": optional(readable_file),
    "resume": boolean,
    "handshake_timeout": lambda v: number_between(0.001, 3600.0)(parse_duration(v)),
})


def client_tls(value: object) -> ClientTLSSettings:
    """``client.tls``: true/false, or a mapping of its keys (TLS is on unless it says ``enabled: false``)."""
    if isinstance(value, (bool, str)):
        return ClientTLSSettings(enabled=boolean(value))
    if not isinstance(value, Mapping):
        raise Invalid(f"expected true, false or a mapping of TLS keys, got {describe(value)}")
    given = _CLIENT_TLS_KEYS.structure(value)
    values, problems = given.values, given.problems
    settings = ClientTLSSettings(**{"enabled": True, **values})
    if not problems and settings.enabled:
        problems += _client_tls_files(settings)
    if problems:
        raise InvalidKeys(problems)
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


def dump_client_tls(s: ClientTLSSettings) -> dict[str, Any]:
    return s.to_wire()


_SERVER_TLS_KEYS = KeyTable("ServerTLSKeys", {
    "cert": readable_file,
    "key": optional(readable_file),
    # A certificate made for the run: said so in what the run records, made again by the next run.
    "auto": boolean,
})


def server_tls(value: object) -> ServerTLSSettings:
    """``server.tls``: ``auto`` (a self-signed certificate made for the run), ``{cert, key}``, or off."""
    if value == "auto":
        return ServerTLSSettings(enabled=True, auto=True)
    if value is None:
        return ServerTLSSettings()
    if isinstance(value, (bool, str)):
        if boolean(value):
            raise Invalid("expected auto or a mapping {cert: FILE, key: FILE}, got true")
        return ServerTLSSettings()
    if not isinstance(value, Mapping):
        raise Invalid(f"expected auto, off or a mapping {{cert: FILE, key: FILE}}, got {describe(value)}")
    given = _SERVER_TLS_KEYS.structure(value)
    values, problems = given.values, given.problems
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
        raise InvalidKeys(problems)
    return settings


def dump_server_tls(s: ServerTLSSettings) -> object:
    if not s.enabled:
        return None
    if s.cert is None:
        return "auto"
    out: dict[str, Any] = {"cert": s.cert, "key": s.key}
    if s.auto:
        out["auto"] = True
    return out
