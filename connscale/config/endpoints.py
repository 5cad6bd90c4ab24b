"""Server endpoint strings (``tcp:``, ``tcp6:``, ``ssl:``, ``unix:``): what one binds, and whether
only this host can reach it. The one owner of both questions (STYLE rule 12).

The answers, and why:

- ``unix:`` binds no address (``endpoint_address`` gives None) and only this host can reach it:
  loopback-only.
- An endpoint without an interface (``tcp:8790``, ``ssl:8443``) binds every interface, as
  Twisted does: *not* loopback-only. ``tcp6:`` without one binds ``::``, the same.
- ``localhost`` is loopback: RFC 6761 (6.3) has resolvers answer it with a loopback address, and
  Twisted's port binds what the resolver says. Any other host name is not: where it resolves
  is not ours to prove.
- An address is loopback when ``ipaddress`` says so (127.0.0.0/8, ``::1``), with an IPv6 zone
  (``%lo``) ignored and an IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) judged as its IPv4
  address. ``0.0.0.0`` and ``::`` are every interface, not loopback.
- Dialling what a server binds: no interface or a wildcard is dialled at 127.0.0.1 (``::1`` for
  ``::``), an interface at itself.

Mirrors only the parts of Twisted's endpoint grammar we need, so loading a config does not
import Twisted (and risk installing a reactor before the tap picks one): ``\\:`` escapes a
colon; tcp takes the interface as its second positional argument, ssl's second is its key
file and tcp6's its backlog, so those take it by keyword only.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["EndpointError", "binds_loopback", "dial_address", "endpoint_address", "endpoint_parts",
           "is_loopback_host"]

#: Kinds whose address this module knows (a config accepts tcp, ssl and unix).
KINDS = ("tcp", "tcp6", "ssl", "unix")
#: Interfaces that mean every interface of their family.
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_DEFAULT_INTERFACE = {"tcp": "", "ssl": "", "tcp6": "::"}


class EndpointError(ValueError):
    """An endpoint string that names no bindable address; the message is one line."""


def endpoint_parts(endpoint: str) -> tuple[str, list[str], dict[str, str]]:
    """(kind, positional arguments, keyword arguments), colons unescaped."""
    parts = [p.replace("\\:", ":") for p in re.split(r"(?<!\\):", endpoint)]
    args = parts[1:]
    return parts[0], [a for a in args if "=" not in a], dict(a.split("=", 1) for a in args if "=" in a)


def endpoint_address(endpoint: str) -> tuple[str, int] | None:
    """``(interface, port)`` a tcp:/tcp6:/ssl: server endpoint string binds ("" = every interface);
    None for a unix socket. Raises EndpointError for another kind, a unix endpoint without a path,
    or a port outside 0..65535 (0 is fine: tests bind ephemeral ports)."""
    kind, positional, keywords = endpoint_parts(endpoint)
    if kind == "unix":
        if endpoint in ("unix", "unix:") or endpoint.startswith("unix::"):
            raise EndpointError(f"unix endpoint needs a path, got {_describe(endpoint)}")
        return None
    if kind not in _DEFAULT_INTERFACE:
        raise EndpointError(f"expected a tcp:, ssl: or unix: endpoint, got {_describe(endpoint)}")
    port = keywords.get("port", positional[0] if positional else "")
    if not port.isdigit() or int(port) > 65535:
        raise EndpointError(f"endpoint needs a port 0..65535, got {_describe(endpoint)}")
    interface = keywords.get("interface", positional[1] if kind == "tcp" and len(positional) > 1
                             else _DEFAULT_INTERFACE[kind])
    return interface, int(port)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address, or ``localhost``) surely is this host's loopback."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False  # "" (every interface), another host name: nothing proves it is loopback
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def binds_loopback(endpoint: str) -> bool:
    """True only when only this host can reach what the server endpoint binds (see the module's answers)."""
    address = endpoint_address(endpoint)
    return address is None or is_loopback_host(address[0])


def dial_address(endpoint: str) -> tuple[str, int] | None:
    """(host, port) a client on this host dials to reach the server endpoint; None for a unix socket."""
    address = endpoint_address(endpoint)
    if address is None:
        return None
    interface, port = address
    if interface in WILDCARDS:
        interface = "::1" if interface == "::" else "127.0.0.1"
    return interface, port


def _describe(value: str) -> str:
    text = repr(value)  # one line, bounded, whatever junk was given
    return text if len(text) <= 60 else text[:57] + "..."
