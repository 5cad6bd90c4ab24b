"""TCP sockets of this network namespace: listeners with their accept queues, and
established sockets by local port.

What `ss -ltn` shows: for a listening socket, Recv-Q is the accept queue now
(connections the kernel completed that the server has not accept()ed) and
Send-Q its maximum (the backlog given to listen(), capped by somaxconn).

Read through sock_diag (inet_diag over netlink), which the kernel can filter by
state: the listeners alone are a handful of messages whatever the connection
count, where /proc/net/tcp is a text line per socket (15 MB a second at
100,000). /proc/net/tcp{,6} is the fallback where netlink is refused.
Both are per network namespace: an observer sees the sockets of its own.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Iterator

import attrs

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
#: TCP states as the kernel numbers them (include/net/tcp_states.h).
ESTABLISHED, LISTEN = 1, 10
_HDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI48s")
#: inet_diag_msg: family, state, timer, retrans, sockid (sport, dport big-endian, ...), expires,
#: rqueue, wqueue, uid, inode.
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


@attrs.frozen
class TcpSocket:
    family: int           # socket.AF_INET or AF_INET6
    state: int
    address: str          # the local address
    port: int             # the local port
    rqueue: int           # LISTEN: accept queue now; else bytes not read yet
    #: LISTEN: the accept queue's maximum (None from /proc/net/tcp, which does not show it);
    #: else bytes not acked yet.
    wqueue: int | None
    inode: int


def _address(family: int, raw: bytes) -> str:
    return socket.inet_ntop(family, raw[:4] if family == socket.AF_INET else raw)


def _parse(family_wanted: int, data: bytes, out: list[TcpSocket]) -> bool:
    """Messages of one netlink read into `out`; True once the dump is done."""
    offset = 0
    while offset + _HDR.size <= len(data):
        length, kind, _, _, _ = _HDR.unpack_from(data, offset)
        if length < _HDR.size:
            return True
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, offset + _HDR.size)
            raise OSError(-code, os.strerror(-code))
        if kind == SOCK_DIAG_BY_FAMILY and length >= _HDR.size + _MSG.size:
            (family, state, _, _, sport, _, src, _, _, _, _, rq, wq, _, inode) = _MSG.unpack_from(
                data, offset + _HDR.size)
            out.append(TcpSocket(family, state, _address(family, src), int.from_bytes(sport, "big"), rq, wq, inode))
        offset += (length + 3) & ~3
    return False


def diag_dump(family: int, states: int) -> list[TcpSocket]:
    """Every TCP socket of `family` whose state is in the bit mask `states`. Raises OSError."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.settimeout(5.0)
        request = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, states, b"\0" * 48)
        s.send(_HDR.pack(_HDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
        out: list[TcpSocket] = []
        while not _parse(family, s.recv(1 << 16), out):
            pass
        return out


def parse_proc_tcp(text: str, family: int) -> Iterator[TcpSocket]:
    """Rows of /proc/net/tcp or tcp6 (addresses in hex, in the host's byte order per 32-bit word)."""
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            local, port = f[1].split(":")
            raw = bytes.fromhex(local)
            # Each 32-bit word is printed as the host sees it: swap back to network order.
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)) if struct.pack("=I", 1)[0] \
                else raw
            tx, rx = f[4].split(":")
            state = int(f[3], 16)
            yield TcpSocket(family, state, socket.inet_ntop(family, words), int(port, 16),
                            int(rx, 16), None if state == LISTEN else int(tx, 16), int(f[9]))
        except (ValueError, OSError):
            continue


def _proc_sockets(family: int, states: int, proc: str) -> list[TcpSocket]:
    name = "tcp" if family == socket.AF_INET else "tcp6"
    try:
        with open(os.path.join(proc, "net", name), encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return []
    return [s for s in parse_proc_tcp(text, family) if states & (1 << s.state)]


def tcp_sockets(states: Iterable[int], proc: str | None = None) -> list[TcpSocket]:
    """TCP sockets of both families in these states: sock_diag, or /proc/net/tcp{,6}
    when netlink is refused (or `proc` names a tree to read instead, as tests do)."""
    mask = 0
    for state in states:
        mask |= 1 << state
    out: list[TcpSocket] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        if proc is None:
            try:
                out += diag_dump(family, mask)
                continue
            except OSError:
                pass
        out += _proc_sockets(family, mask, proc or "/proc")
    return out


def listeners(proc: str | None = None) -> list[TcpSocket]:
    return tcp_sockets([LISTEN], proc)


#: Where the local port sits in a netlink message (header, then inet_diag_msg).
_SPORT_AT = _HDR.size + 4


#: inet_diag bytecode (linux/inet_diag.h): an op is (code, yes, no); a port comparison carries
#: its port in the `no` of a second op. The filter passes when a jump lands exactly at the end.
_BC_JMP, _BC_S_GE, _BC_S_LE = 1, 2, 3
_OP = struct.Struct("=BBH")
INET_DIAG_REQ_BYTECODE = 1


def port_filter(ports: Iterable[int]) -> bytes:
    """Bytecode passing sockets whose local port is one of `ports` (what `ss` builds for
    `sport = :A or sport = :B`): one "A <= sport <= A" test per port, joined by jumps.

    Each test is 16 bytes whose failing branches jump 4 bytes past its end: into the next
    test (past the JMP that ends a passing test at the end of the code), or beyond the end
    (no match) for the last. The kernel audits that every jump lands on an op."""
    code = b""
    for port in sorted(set(ports), reverse=True):
        test = _OP.pack(_BC_S_GE, 8, 20) + _OP.pack(0, 0, port) + _OP.pack(_BC_S_LE, 8, 12) + _OP.pack(0, 0, port)
        code = test if not code else test + _OP.pack(_BC_JMP, 4, len(code) + 4) + code
    return code


def _count_dump(family: int, ports: set[int], out: dict[int, int]) -> None:
    """Count established sockets by local port straight from the netlink bytes, the kernel
    passing only those on `ports` (a host with a million other sockets costs us nothing)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.settimeout(5.0)
        code = port_filter(ports)
        request = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << ESTABLISHED, b"\0" * 48)
        request += struct.pack("=HH", 4 + len(code), INET_DIAG_REQ_BYTECODE) + code
        s.send(_HDR.pack(_HDR.size + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
        sport, header = struct.Struct(">H"), _HDR
        while True:
            data = s.recv(1 << 17)
            offset = 0
            while offset + header.size <= len(data):
                length, kind, _, _, _ = header.unpack_from(data, offset)
                if kind == NLMSG_DONE or length < header.size:
                    return
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, offset + header.size)
                    raise OSError(-code, os.strerror(-code))
                (port,) = sport.unpack_from(data, offset + _SPORT_AT)
                if port in out:
                    out[port] += 1
                offset += (length + 3) & ~3


def established_by_port(ports: Iterable[int], proc: str | None = None) -> dict[int, int]:
    """Established sockets whose local port is one of `ports`: on a server's listening ports,
    the connections it accepted (a client's socket has an ephemeral local port instead)."""
    out = dict.fromkeys(set(ports), 0)
    if not out:
        return out
    if proc is None:
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                _count_dump(family, set(out), out)
            return out
        except OSError:
            out = dict.fromkeys(out, 0)
    for s in tcp_sockets([ESTABLISHED], proc or "/proc"):
        if s.port in out:
            out[s.port] += 1
    return out
