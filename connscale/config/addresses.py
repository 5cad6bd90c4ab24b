"""The config's address parsers: ports and port ranges, IP addresses and ranges, hosts,
HOST:PORT, server endpoints and the target URL.

Like every parser of `config.values`, each returns the typed value or raises ``Invalid``
with the message that follows ``<dotted.key>: ``. Ranges are counted before they are
expanded, so a typo'd ``0.0.0.0-255.255.255.255`` fails at once instead of eating memory.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from connscale.config.endpoints import endpoint_address
from connscale.config.target import parse_url
from connscale.config.values import Invalid, describe, first_duplicate, non_empty

__all__ = ["MAX_IPS", "MAX_PORTS", "parse_hostport", "parse_ips", "parse_ports"]

MAX_PORTS = 1024
MAX_IPS = 4096


def _items(spec: object, what: str, *, ints: bool) -> list[int | str]:
    """Flatten ``"a,b"``, ``["a", "b,c"]`` (and ints when allowed) into stripped items."""
    elements = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    items: list[int | str] = []
    for element in elements:
        if isinstance(element, str):
            items.extend(part.strip() for part in element.split(",") if part.strip())
        elif ints and isinstance(element, int) and not isinstance(element, bool):
            items.append(element)
        else:
            raise Invalid(f"expected {what}, got {describe(element)}")
    return items


_PORT_RANGE = re.compile(r"(\d+)(?:\s*-\s*(\d+))?", re.ASCII)


def parse_ports(spec: object) -> tuple[int, ...]:
    """Ports from ``8989``, ``"8989"``, ``"8989-8992"``, ``"8989,8990"`` or a list of those.

    Order is kept (it is the order connections are spread over); duplicates are an error
    because they silently double the load on one port.
    """
    ports: list[int] = []
    for item in _items(spec, "a port, a range like 8989-8992, or a list", ints=True):
        if isinstance(item, int):
            lo = hi = item
        elif match := _PORT_RANGE.fullmatch(item):
            lo = int(match[1])
            hi = int(match[2]) if match[2] else lo
        else:
            raise Invalid(f"expected a port or a range like 8989-8992, got {describe(item)}")
        for port in (lo, hi):
            if not 1 <= port <= 65535:
                raise Invalid(f"port {port} out of range 1..65535")
        if lo > hi:
            raise Invalid(f"port range {lo}-{hi} is reversed")
        if len(ports) + hi - lo + 1 > MAX_PORTS:
            raise Invalid(f"too many ports (more than {MAX_PORTS})")
        ports.extend(range(lo, hi + 1))
    if not ports:
        raise Invalid("no ports given")
    if (duplicate := first_duplicate(ports)) is not None:
        raise Invalid(f"duplicate port {duplicate}")
    return tuple(ports)


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise Invalid(f"expected an IP address, got {describe(text)}") from None


def ip_literal(value: object) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected an IP address, got {describe(value)}")
    return str(parse_ip(value.strip()))  # canonical form, so equal addresses compare equal


def parse_ips(spec: object) -> tuple[str, ...]:
    """Addresses from ``"127.0.0.2"``, ``"127.0.0.2-127.0.0.9"``, ``"127.0.0.2-9"``, lists and
    comma-separated mixes of those. ``""``/``[]`` give ``()`` (let the kernel choose)."""
    addrs: list[str] = []
    for item in _items(spec, "an IP address, a range or a list", ints=False):
        assert isinstance(item, str)
        lo_text, dash, hi_text = (part.strip() for part in item.partition("-"))
        lo = parse_ip(lo_text)
        if not dash:
            hi = lo
        else:
            # "10.0.0.2-9" / "10.0.0.250-1.9" abbreviate the leading octets.
            if lo.version == 4 and re.fullmatch(r"\d+(?:\.\d+){0,2}", hi_text, re.ASCII):
                hi_parts = hi_text.split(".")
                hi_text = ".".join(lo_text.split(".")[: 4 - len(hi_parts)] + hi_parts)
            hi = parse_ip(hi_text)
            if hi.version != lo.version:
                raise Invalid(f"range {item} mixes IPv4 and IPv6")
            if int(hi) < int(lo):  # same family (checked above); mypy cannot see that through the union
                raise Invalid(f"address range {item} is reversed")
        # Count before expanding: "0.0.0.0-255.255.255.255" must fail fast, not eat memory.
        if len(addrs) + int(hi) - int(lo) + 1 > MAX_IPS:
            raise Invalid(f"too many addresses (more than {MAX_IPS})")
        addrs.extend(str(type(lo)(n)) for n in range(int(lo), int(hi) + 1))
    if (duplicate := first_duplicate(addrs)) is not None:
        raise Invalid(f"duplicate address {duplicate}")
    return tuple(addrs)


_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?", re.ASCII)


def host_name(value: object) -> str:
    """An IP literal (canonicalised) or a DNS name (resolved later, at connect time)."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            # "10.0.0.300" would pass the hostname grammar; it is a typo'd address.
            if _HOSTNAME.fullmatch(value) and not re.fullmatch(r"[\d.]+", value):
                return value
    raise Invalid(f"expected a host name or IP address, got {describe(value)}")


def parse_hostport(spec: object) -> tuple[str, tuple[int, ...]]:
    """``(host, ports)`` from ``"127.0.0.1:8989-8992"``, ``"[::1]:8989"``, ``"host:8989,8990"``."""
    if not isinstance(spec, str):
        raise Invalid(f"expected HOST:PORT, got {describe(spec)}")
    text = spec.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise Invalid(f"expected [IPV6]:PORT, got {describe(spec)}")
        if parse_ip(host).version != 6:
            raise Invalid(f"brackets are only for IPv6 addresses, got {describe(spec)}")
        return str(parse_ip(host)), parse_ports(rest[1:])
    host, colon, ports = text.rpartition(":")
    if not colon or not host:
        raise Invalid(f"expected HOST:PORT, got {describe(spec)}")
    if ":" in host:
        raise Invalid(f"IPv6 addresses need brackets, e.g. [::1]:8989, got {describe(spec)}")
    return host_name(host), parse_ports(ports)


def one_hostport(value: object) -> tuple[str, int]:
    host, ports = parse_hostport(value)
    if len(ports) != 1:
        raise Invalid(f"expected exactly one port, got {len(ports)}")
    return host, ports[0]


def format_hostport(host: str, ports: Sequence[int]) -> str:
    """Inverse of parse_hostport, with consecutive ports folded back into ranges."""
    runs: list[list[int]] = []
    for port in ports:
        if runs and port == runs[-1][1] + 1:
            runs[-1][1] = port
        else:
            runs.append([port, port])
    text = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)
    return f"[{host}]:{text}" if ":" in host else f"{host}:{text}"


def format_master(hostport: tuple[str, int] | None) -> str | None:
    return hostport and format_hostport(hostport[0], hostport[1:])


_ENDPOINT_KINDS = ("tcp", "ssl", "unix")


def server_endpoint(value: object) -> str:
    text = non_empty(value)
    if text.partition(":")[0] not in _ENDPOINT_KINDS:
        raise Invalid("expected a server endpoint starting with tcp:, ssl: or unix:, "
                      f"got {describe(value)}")
    endpoint_address(text)  # EndpointError (a ValueError) says what is wrong with it
    return text


def is_ip(host: str) -> bool:
    try:
        parse_ip(host)
    except Invalid:
        return False
    return True


def target_url(value: object) -> str:
    """`client.url`: checked whole here (scheme, host, ports, path); kept as written."""
    try:
        parse_url(value, parse_hostport)
    except ValueError as e:
        raise Invalid(str(e)) from None
    assert isinstance(value, str)
    return value.strip()

