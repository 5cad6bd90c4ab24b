"""Hostile peers of a hub, each a real process on loopback (`python -m tests.support.hostile MODE ...`).

- ``relay LISTEN_PORT HUB_PORT``: a hub that does not know the secret, reachable by the victim:
  it terminates the victim's TLS with a certificate of its own, dials the real hub over TLS and
  passes every byte of the login (and whatever follows) both ways. Prints "RELAYING".
- ``collect HUB_PORT N``: logs in N times with a guess and prints, per attempt, what the hub
  gave (JSON lines): the material an offline cracker would work on.
- ``guess HUB_PORT N SECONDS [UID]``: N failed logins (at most SECONDS), as UID when given (the
  process drops to it after importing what it needs), printing how each ended.
- ``flood HUB_PORT AGENT_KEY_FILE NAMES``: an agent-key holder flooding the hub: registers
  NAMES agent names and leaves, then one agent that answers every report at the record limits.
- ``squat HUB_PORT AGENT_KEY_FILE NAME``: registers under NAME (someone else's) and prints how it went.
- ``garbage HUB_PORT N``: N TLS connections that send bytes no login is made of, and report
  how many bytes each could send before the hub hung up.
- ``agent HUB_PORT AGENT_KEY_FILE NAME HOST FAILURE_KEY``: an agent whose host and failure key
  are whatever it says (escape sequences, rich markup).

Every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.spread import pb

from connscale.control import channel
from connscale.control.auth import Credentials, LoginExchange, confirmation, transcript
from connscale.control.guard import ControlClientFactory
from connscale.control.login import PROTOCOL_VERSION

HOST = "127.0.0.1"


def why(e: BaseException) -> str:
    """One line: a refusal copied over PB is its message."""
    return (str(e).strip().splitlines() or [repr(e)])[0][:300]


def connect(reactor: Any, port: int) -> defer.Deferred[Any]:
    factory = ControlClientFactory()
    return channel.client_endpoint(reactor, HOST, port).connect(factory).addCallback(lambda _: factory)


# ---------------------------------------------------------------- relay


class Pipe(protocol.Protocol):
    def __init__(self) -> None:
        self.peer: Pipe | None = None
        self.pending: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Any) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class VictimSide(Pipe):
    def connectionMade(self) -> None:
        from twisted.internet import reactor

        hub = Pipe()
        hub.peer = self
        self.peer = hub

        def connected(p: Pipe) -> None:
            for data in self.pending:
                p.transport.write(data)
            self.pending.clear()

        factory = protocol.Factory.forProtocol(lambda: hub)
        channel.client_endpoint(reactor, HOST, self.factory.hub_port).connect(factory).addCallbacks(
            connected, lambda _: self.transport.loseConnection())


def relay(listen: int, hub_port: int) -> None:
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(VictimSide)
    factory.hub_port = hub_port  # type: ignore[attr-defined]
    reactor.listenTCP(listen, channel.wrap_server(factory), interface=HOST)
    print("RELAYING", flush=True)
    reactor.callLater(120, reactor.stop)  # bounded
    reactor.run()


# ---------------------------------------------------------------- collect / guess


@defer.inlineCallbacks
def one_guess(reactor: Any, port: int, password: bytes, entropy: bytes = b""):  # type: ignore[no-untyped-def]
    """One login as operator with `password` (a guess); the hub's answers, and how it ended."""
    factory = yield connect(reactor, port)
    try:
        root = yield factory.getRootObject()
        binding = channel.binding(root.broker.transport)
        salt, exchange = yield root.callRemote("hello", PROTOCOL_VERSION, "operator", f"{HOST}:{port}")
        tr = transcript("operator", f"{HOST}:{port}", salt, binding)
        ours = LoginExchange("peer", password, tr)
        if entropy:
            from spake2 import SPAKE2_A

            ours._spake = SPAKE2_A(password, idA=b"peer\0" + tr, idB=b"hub\0" + tr,
                                   entropy_f=lambda n: entropy[:n])
        theirs, hub_confirm = yield exchange.callRemote("start", ours.start())
        key = ours.finish(theirs)
        record = {"salt": salt.hex(), "transcript": tr.hex(), "hub_message": theirs.hex(),
                  "hub_confirm": hub_confirm.hex()}
        try:
            yield exchange.callRemote("confirm", confirmation(key, "peer"), None)
            record["ended"] = "LOGGED IN"
        except Exception as e:
            record["ended"] = "REFUSED " + why(e)
        return record
    except Exception as e:
        return {"ended": "REFUSED " + why(e)}
    finally:
        factory.disconnect()


def collect(port: int, n: int) -> None:
    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        for i in range(n):
            entropy = bytes([i + 1]) * 64  # the attacker's own randomness, kept for the offline attack
            record = yield one_guess(reactor, port, b"a guess of the operator's password", entropy)
            record["entropy"] = entropy.hex()
            print(json.dumps(record), flush=True)

    task.react(main)


def guess(port: int, n: int, seconds: float, uid: int | None) -> None:
    if uid is not None:
        # Everything a login needs is imported now: this interpreter's files may not be the user's to read.
        import encodings.idna  # noqa: F401
        import spake2.spake2  # noqa: F401
        from twisted.internet import endpoints, _resolver, reactor  # noqa: F401
        from twisted.internet import ssl, tcp, _sslverify  # noqa: F401

        LoginExchange("peer", b"warm up", b"t").start()
        os.setgid(uid)
        os.setuid(uid)  # from here our sockets are this user's

    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        give_up = time.monotonic() + seconds
        for _ in range(n):
            if time.monotonic() > give_up:
                break
            record = yield one_guess(reactor, port, os.urandom(16))
            print(record["ended"], flush=True)
            if "too many failed logins" in record["ended"]:
                yield task.deferLater(reactor, 0.05, lambda: None)

    task.react(main)


# ---------------------------------------------------------------- agents


class Mind(pb.Referenceable):
    def __init__(self, report: Any = None) -> None:
        self.report = report
        self.asked = 0

    def remote_report_packed(self) -> Any:
        self.asked += 1
        return self.report


def info(name: str, host: str = "h1", **extra: Any) -> dict[str, Any]:
    return {"host": host, "pid": os.getpid(), "budget": 19900, **extra}


@defer.inlineCallbacks
def register(reactor: Any, port: int, credentials: Credentials, name: str, mind: Any, **extra: Any):  # type: ignore[no-untyped-def]
    from connscale.control import dial

    factory, perspective = yield dial.login(reactor, HOST, port, f"agent:{name}", credentials, mind=mind)
    answer = yield perspective.callRemote("register", info(name, **extra))
    return factory, perspective, answer


def big_report() -> list[str]:
    """A report at what the records accept: every list and mapping as long as allowed."""
    from connscale.records.packed import pack_pieces
    from connscale.control.records import MAX_EVENTS, MAX_FAILURE_KEYS

    failures = {f"steady:cause_{i:04d}_{'x' * 30}": i + 1 for i in range(MAX_FAILURE_KEYS)}
    row = {"index": 0, "pid": 1, "alive": True, "target": 0, "open": 0, "budget": 19900,
           "resources": {f"k{i}": "v" * 60 for i in range(200)}}
    return pack_pieces({
        "totals": {"open": 0, "failures": failures, "protocol": {}},
        "workers": [dict(row, index=i) for i in range(4096)],
        "events": ["e" * 300] * MAX_EVENTS,
    })


def flood(port: int, key_file: str, names: int) -> None:
    credentials = Credentials.from_secret(open(key_file, "rb").read())

    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        accepted = 0
        for i in range(names):
            try:
                factory, _, _ = yield register(reactor, port, credentials, f"flood-{i}", Mind())
                accepted += 1
                factory.disconnect()
            except Exception:
                pass
        print(f"NAMES {accepted}", flush=True)
        mind = Mind(big_report())
        factory, _, _ = yield register(reactor, port, credentials, "flooder", mind)
        print("FLOODING", flush=True)
        yield task.deferLater(reactor, 8, lambda: None)
        print(f"ASKED {mind.asked}", flush=True)
        factory.disconnect()
        yield task.deferLater(reactor, 0.5, lambda: None)

    task.react(main)


def squat(port: int, key_file: str, name: str) -> None:
    credentials = Credentials.from_secret(open(key_file, "rb").read())

    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        try:
            factory, _, answer = yield register(reactor, port, credentials, name, Mind())
            print("TOOK", name, flush=True)
            yield task.deferLater(reactor, 3, lambda: None)
            factory.disconnect()
        except Exception as e:
            print("REFUSED", str(e).strip().splitlines()[-1], flush=True)

    task.react(main)


def agent(port: int, key_file: str, name: str, host: str, failure_key: str) -> None:
    from connscale.records.packed import pack_pieces

    credentials = Credentials.from_secret(open(key_file, "rb").read())

    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        try:
            factory, _, _ = yield register(reactor, port, credentials, name, Mind(pack_pieces(
                {"totals": {"open": 0, "failures": {failure_key: 3}}})), host=host)
            print("REGISTERED", flush=True)
        except Exception as e:
            print("REFUSED", str(e).strip().splitlines()[-1], flush=True)
            return
        yield task.deferLater(reactor, 6, lambda: None)
        factory.disconnect()

    task.react(main)


# ---------------------------------------------------------------- garbage


class Garbage(protocol.Protocol):
    def __init__(self, done: defer.Deferred[int]) -> None:
        self.done = done
        self.sent = 0

    def connectionMade(self) -> None:
        self.send()

    def send(self) -> None:
        if self.transport is None or self.done.called or self.sent >= 64 * 1024:
            return
        self.transport.write(b"\x8f" * 256)  # a Banana type byte no dialect knows, again and again
        self.sent += 256
        from twisted.internet import reactor

        reactor.callLater(0.01, self.send)

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.callback(self.sent)


def garbage(port: int, n: int) -> None:
    @defer.inlineCallbacks
    def main(reactor: Any):  # type: ignore[no-untyped-def]
        for _ in range(n):
            done: defer.Deferred[int] = defer.Deferred()
            factory = protocol.Factory.forProtocol(lambda: Garbage(done))
            yield channel.client_endpoint(reactor, HOST, port).connect(factory)
            done.addTimeout(10, reactor)
            sent = yield done
            print(f"SENT {sent}", flush=True)

    task.react(main)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "relay":
        relay(int(args[0]), int(args[1]))
    elif mode == "collect":
        collect(int(args[0]), int(args[1]))
    elif mode == "guess":
        guess(int(args[0]), int(args[1]), float(args[2]), int(args[3]) if len(args) > 3 else None)
    elif mode == "flood":
        flood(int(args[0]), args[1], int(args[2]))
    elif mode == "squat":
        squat(int(args[0]), args[1], args[2])
    elif mode == "agent":
        agent(int(args[0]), args[1], args[2], args[3], args[4])
    elif mode == "garbage":
        garbage(int(args[0]), int(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
