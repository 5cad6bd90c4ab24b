"""The config's cross-key checks: what no single key can be wrong about alone.

Each check reads a few keys of the whole `Config` and yields one line per problem, named
by the key to change. A check is skipped when any key it reads failed to parse, because the
value it would see is a stand-in default and its complaint would mislead.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Set

from connscale.config.endpoints import WILDCARDS, endpoint_address
from connscale.config.settings import Config
from connscale.config.tls import is_self_signed

__all__ = ["cross_check"]


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


CROSS_CHECKS: tuple[tuple[tuple[str, ...], Callable[[Config], Iterator[str]]], ...] = (
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


def cross_check(config: Config, failed: Set[str]) -> list[str]:
    """Every cross-key problem of ``config``, skipping the checks that read a key in ``failed``."""
    return [problem for keys, check in CROSS_CHECKS if failed.isdisjoint(keys) for problem in check(config)]
