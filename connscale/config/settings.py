"""The settings table: every config key, its default and its parser, as attrs classes.

Every setting is declared once, as an attrs field carrying its default and its parser
(see ``_setting``); loading (`config.loader`), unknown-key detection and ``Config.as_dict``
are all driven by this table, so adding a key means adding one line. The parsers live in
`config.values`, `config.addresses` and `config.tls_keys`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from connscale.config.addresses import (
    format_hostport,
    format_master,
    ip_literal,
    host_name,
    one_hostport,
    parse_hostport,
    parse_ips,
    parse_ports,
    server_endpoint,
    target_url,
)
from connscale.records.base import RecordError
from connscale.config.target import DEFAULT_PORTS, PROTOCOLS, ProfileOptions, Target, parse_url
from connscale.config.tls import ClientTLSSettings, ServerTLSSettings
from connscale.config.tls_keys import client_tls, dump_client_tls, dump_server_tls, server_tls
from connscale.config.values import (
    Invalid,
    Parser,
    Workers,
    agent_names,
    auto_or_boolean,
    boolean,
    choice,
    describe,
    dump_auto,
    duration,
    env_vars,
    int_between,
    non_empty,
    number_between,
    observe_target,
    optional,
    positive,
    process_name,
    readable_file,
    secret_text,
    shell_words,
    short_name,
    ssh_user_name,
    threshold_lines,
    unknown_key,
    user_path,
    worker_count,
)

__all__ = [
    "REDACTED", "ClientHost", "ClientSettings", "Config", "ControlSettings", "NetSettings", "ObserveSettings",
    "RunSettings", "ScenarioSettings", "ServerSettings", "Spec", "keys_of",
]

Framing = Literal["line", "raw"]


def _options(*names: str) -> Callable[[object], dict[str, Any]]:
    """A profile's options (`client.http: {path: /health}`), each checked by the field of
    `ProfileOptions` it fills, so a bad one is one line naming it."""
    fields = {f.name: f for f in attrs.fields(ProfileOptions)}

    def parse(value: object) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a mapping with keys from {', '.join(names)}, got {describe(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in names:
                raise Invalid(f"{key}: {unknown_key(key, names)}")
            try:
                out[key] = fields[key].metadata["connscale.wire"](item)
            except RecordError as e:
                raise Invalid(f"{key}: {e}") from None
        return out
    return parse


def _redact_url(url: str) -> str:
    """The URL with its password (`scheme://user:PASSWORD@host`) redacted."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1<redacted>@", url)


def _dump_options(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: dict(v) if k == "headers" else v for k, v in value.items()}


def _plain(value: Any) -> Any:
    """JSON-able rendering that the matching parser accepts back (tuples become lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@attrs.frozen
class Spec:
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
                       metadata={_META: Spec(parse, dump, key, secret, secret_values, redact)}, **field)


@attrs.frozen
class ServerSettings:
    """``server:`` the ping/pong listener."""

    interface: str = _setting("127.0.0.1", ip_literal)
    ports: tuple[int, ...] = _setting((8989,), parse_ports)
    backlog: int = _setting(4096, int_between(1, 1_000_000))
    # line, raw, or websocket (the upgrade, then ping frames answered with pong frames).
    framing: str = _setting("line", choice("line", "raw", "websocket"))
    workers: Workers = _setting("auto", worker_count)   # 0 = serve inside the hub process
    status_interval: float = _setting(5.0, duration(allow_zero=False))
    max_line: int = _setting(1024, int_between(16, 65536))   # bytes
    # TLS on every port, whatever the framing (see config/tls.py).
    tls: ServerTLSSettings = _setting(ServerTLSSettings(), server_tls, dump=dump_server_tls)


@attrs.frozen
class ClientSettings:
    """``client:`` the connection pool (standalone or as a hub's agent)."""

    server_host: str = _setting("127.0.0.1", parse_hostport, key="server", dump=format_hostport)
    server_ports: tuple[int, ...] = _setting((8989,), key="server")
    connections: int = _setting(1000, int_between(0, 100_000_000))
    rate: float = _setting(2000.0, positive)                  # connects per second
    interval: float = _setting(5.0, duration(allow_zero=False))
    timeout: float = _setting(1.0, duration(allow_zero=False))
    source_ips: tuple[str, ...] = _setting((), parse_ips)      # () = the kernel chooses
    framing: Framing = _setting("line", choice("line", "raw"))
    workers: Workers = _setting("auto", worker_count)              # 0 = inside the agent process
    per_route_max: int = _setting(14000, int_between(1, 65535))       # per (source ip, server ip:port)
    status_interval: float = _setting(5.0, duration(allow_zero=False))
    master: tuple[str, int] | None = _setting(
        None, optional(one_hostport), dump=format_master)
    name: str | None = _setting(None, optional(short_name))         # None = hostname, at runtime
    # An agent whose hub is gone this long stops its load (and waits for orders).
    hub_grace: float = _setting(60.0, duration(allow_zero=True))
    # How the client's closes end: fin (orderly; each closed port waits out
    # TIME_WAIT on this host) or rst (a reset, SO_LINGER 0: no TIME_WAIT).
    close: Literal["fin", "rst"] = _setting("fin", choice("fin", "rst"))
    # The target as one URL (redis://127.0.0.1:6379, wss://host/socket, tcp://host:8989-8992):
    # protocol, TLS, server and path at once; `connscale run` then starts no server of its own.
    url: str | None = _setting(None, optional(target_url), redact=_redact_url)
    # What the connections speak (net/profiles); None = client.framing (line or raw), or the URL's.
    protocol: str | None = _setting(None, optional(choice(*PROTOCOLS)))
    http: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("method", "path", "headers"),
                                       dump=_dump_options, hash=False)
    websocket: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("path", "subprotocol", "headers"),
                                            dump=_dump_options, hash=False)
    mqtt: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("client_prefix"), hash=False)
    custom: Mapping[str, Any] = _setting(attrs.Factory(dict), _options("send", "expect", "expect_regex"),
                                         hash=False)
    # A user and password for the target (MQTT's CONNECT, Redis's AUTH), also from the URL's
    # user:password@. The password never rides a command line (procs.records.without_password).
    user: str | None = _setting(None, optional(non_empty))
    password: str | None = _setting(None, optional(non_empty), secret=True)
    # TLS around every connection, whatever the protocol inside (see config/tls.py); a TLS
    # scheme in `url` switches it on (`_with_url_target`).
    tls: ClientTLSSettings = _setting(ClientTLSSettings(), client_tls, dump=dump_client_tls)
    max_reply: int = _setting(65536, int_between(64, 16 * 1024 * 1024))   # bytes of one reply at most
    # A session opening (upgrade, CONNECT, first PING) at most, once connected (and TLS is up).
    handshake_timeout: float = _setting(5.0, duration(allow_zero=False))

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

    listen: str = _setting("tcp:8790:interface=127.0.0.1", server_endpoint)
    secret: str | None = _setting(None, optional(secret_text), secret=True)
    secret_file: str | None = _setting(None, optional(readable_file))
    tls_ca: str | None = _setting(None, optional(readable_file))  # CA that signed an ssl: hub's cert
    # ssh (on once console_keys is set) or none. `telnet` still parses, only so that control/console.py
    # refuses it with its own line (TELNET_REMOVED); no message or help offers it.
    console: Literal["ssh", "none", "telnet"] = _setting("ssh", choice("ssh", "none", retired=("telnet",)))
    console_listen: str = _setting("tcp:8791:interface=127.0.0.1", server_endpoint)
    # The console's own authorized_keys file; None = no console (~/.ssh/authorized_keys is never read).
    console_keys: str | None = _setting(None, optional(user_path))
    console_user: str = _setting("admin", non_empty)
    # Prometheus /metrics of the hub (e.g. tcp:9108:interface=127.0.0.1); None = off.
    metrics_listen: str | None = _setting(None, optional(server_endpoint))


@attrs.frozen
class ClientHost:
    """One entry of ``clients:``: a remote machine the hub starts an agent on over ssh."""

    name: str   # its key under `clients:`, so deliberately not a setting of its own
    host: str = _setting(attrs.NOTHING, host_name)
    user: str | None = _setting(None, optional(ssh_user_name))
    port: int = _setting(22, int_between(1, 65535))
    ssh_options: tuple[str, ...] = _setting((), shell_words)
    python: str = _setting("python3", non_empty)   # remote interpreter, e.g. /opt/venv/bin/python
    workers: Workers = _setting("auto", worker_count)
    source_ips: tuple[str, ...] = _setting((), parse_ips)
    env: Mapping[str, str] = _setting(attrs.Factory(dict), env_vars, hash=False, secret_values=True)
    # HOST:PORT the agent on this host dials; None = the hub's control.listen address.
    master: tuple[str, int] | None = _setting(None, optional(one_hostport), dump=format_master)
    # A pid or process name: client_start then launches an observer of it there, not an agent.
    observe: str | None = _setting(None, optional(observe_target))


@attrs.frozen
class ScenarioSettings:
    """``scenario:`` the ramp the hub drives its agents through."""

    target: int = _setting(50000, int_between(1, 100_000_000))
    rate: float = _setting(2000.0, positive)
    steps: int = _setting(5, int_between(1, 1000))                  # ramp in this many equal steps
    hold: float = _setting(5.0, duration(allow_zero=True))   # after each step
    final_hold: float = _setting(10.0, duration(allow_zero=True))
    max_failures: int = _setting(0, int_between(0))                  # stop once failures exceed this
    time_limit: float = _setting(110.0, duration(allow_zero=False))
    # Server-side failures are the clients' too (and counted there); count the
    # server's own tally toward max_failures only when asked.
    count_server_failures: bool = _setting(False, boolean)
    # ramp: reach `target` in steps and hold it. search: find the largest count
    # that passes the SLO by itself, up to `target` (see README, "Search mode").
    mode: Literal["ramp", "search"] = _setting("ramp", choice("ramp", "search"))
    search_start: int = _setting(5000, int_between(1, 100_000_000))      # the first plateau
    search_growth: float = _setting(2.0, number_between(1.01, 100.0))  # next plateau = last pass x this
    search_plateau: float = _setting(3.0, number_between(1.0, 1000.0))  # hold each plateau this many client.intervals
    search_resolution: float = _setting(0.05, number_between(0.001, 1.0))  # stop narrowing within this share
    slo_p99_ms: float = _setting(100.0, positive)                # a plateau passes with p99 RTT at most this
    slo_timeout_rate: float = _setting(0.001, number_between(0.0, 1.0))  # timeouts per ping
    slo_failures: int = _setting(0, int_between(0))                      # failures of any cause per plateau
    # What the run must measure to pass, e.g. "held >= 500000" (README, "Gating a release on capacity").
    thresholds: tuple[str, ...] = _setting((), threshold_lines)
    # The fleet `connscale run` drives besides the `clients:` it launches over ssh: agents
    # already registered with the hub (started by hand), named and waited for.
    agents: tuple[str, ...] = _setting((), agent_names)
    # Whether `connscale run` starts an agent on this host too; auto (None): only when the
    # fleet is empty (no `clients:`, no `scenario.agents`).
    local_agent: bool | None = _setting(None, auto_or_boolean, dump=dump_auto)


@attrs.frozen
class ObserveSettings:
    """``observe:`` the server process an observer watches (`connscale observe`, `connscale run`).

    Neither set: `connscale run` watches its own server workers."""

    pid: int | None = _setting(None, optional(int_between(1, 1 << 22)))
    name: str | None = _setting(None, optional(process_name))


@attrs.frozen
class RunSettings:
    """``run:`` where a run's records go."""

    dir: str = _setting("runs", user_path)


@attrs.frozen
class NetSettings:
    """``net:`` how connscale's own sockets are driven, on both sides."""

    #: connscale's own transports, dispatch and timer wheel (net.fastpath); false:
    #: Twisted's listenTCP/connectTCP transports and a callLater per connection.
    #: CONNSCALE_FAST_PATH (1/0) overrides it.
    fast_path: bool = _setting(True, boolean)


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
        for section in TOP_KEYS:
            if section == "clients":
                out[section] = {n: _dump(h, redact_secrets) for n, h in self.clients.items()}
            else:
                out[section] = _dump(getattr(self, section), redact_secrets)
        return out


SECTIONS: dict[str, type] = {
    "server": ServerSettings, "client": ClientSettings, "control": ControlSettings,
    "scenario": ScenarioSettings, "run": RunSettings, "observe": ObserveSettings, "net": NetSettings,
}
TOP_KEYS = ("server", "client", "control", "clients", "scenario", "run", "observe", "net")


@functools.cache
def keys_of(cls: type) -> dict[str, tuple[Spec, tuple[str, ...]]]:
    """YAML key -> (spec, attribute names it fills), in declaration order."""
    table: dict[str, tuple[Spec, tuple[str, ...]]] = {}
    for field in attrs.fields(cls):
        if (spec := field.metadata.get(_META)) is not None:
            key = spec.key or field.name
            first, names = table.get(key, (spec, ()))
            table[key] = (first, names + (field.name,))
    return table


def _dump(obj: Any, redact_secrets: bool) -> dict[str, Any]:
    out = {}
    cls: type = type(obj)
    for key, (spec, names) in keys_of(cls).items():
        value = spec.dump(*(getattr(obj, name) for name in names))
        if spec.secret_values and redact_secrets and value:
            value = {k: REDACTED for k in value}
        if redact_secrets and value is not None and spec.redact is not None:
            value = spec.redact(value)
        out[key] = REDACTED if spec.secret and redact_secrets and value is not None else value
    return out
