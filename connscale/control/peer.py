"""Who is on the other end of a control connection, as the login throttle counts it.

A remote peer is its address. A peer on loopback is its address *and the local
user that owns its socket* (asked of the kernel with one NETLINK_SOCK_DIAG
lookup, ~10 µs): every local user shares 127.0.0.1, and a throttle keyed on the
address alone would let any of them lock the operator out by failing logins on
purpose. When the kernel does not say (no netlink here, a socket gone), the
address alone is the key.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from connscale.config.endpoints import is_loopback_host

__all__ = ["peer_key", "socket_uid"]

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NO_COOKIE = 0xFFFFFFFF


def socket_uid(peer: tuple[str, int], local: tuple[str, int]) -> int | None:
    """The uid owning the TCP socket at `peer` connected to our `local` (both on this host)."""
    family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET

    def address(host: str) -> bytes:
        return socket.inet_pton(family, host).ljust(16, b"\0")

    try:
        # struct inet_diag_sockid of the peer's socket: its port and address are the source.
        sockid = (struct.pack("!HH", peer[1], local[1]) + address(peer[0]) + address(local[0])
                  + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE))
        request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
        header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as s:
            s.settimeout(1.0)
            s.send(header + request)
            answer = s.recv(8192)
        _, kind = struct.unpack_from("=IH", answer)
        if kind != _SOCK_DIAG_BY_FAMILY:
            return None  # NLMSG_ERROR: no such socket
        # nlmsghdr (16), then inet_diag_msg: 4 bytes, sockid (48), expires, rqueue, wqueue, uid.
        (uid,) = struct.unpack_from("=I", answer, 16 + 4 + 48 + 12)
        return int(uid)
    except (OSError, ValueError, struct.error):
        return None


def peer_key(transport: Any) -> str:
    """The throttle's key for this connection: "HOST", or "HOST uid N" on loopback."""
    peer = transport.getPeer() if transport is not None else None
    host = str(getattr(peer, "host", peer))
    port = getattr(peer, "port", None)
    local = transport.getHost() if is_loopback_host(host) else None
    if isinstance(port, int) and local is not None and isinstance(getattr(local, "port", None), int):
        uid = socket_uid((host, port), (str(local.host), int(local.port)))
        if uid is not None:
            return f"{host} uid {uid}"
    return host
