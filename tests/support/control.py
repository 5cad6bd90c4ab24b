"""The control plane's in-memory harness: a fake agent mind, one PB connection to a controller
(TLS, the login gate, the guarded broker, over twisted.test.iosim), and the configs they use.

Shared by the control, login, link, phases and hub-CLI tests; their fixtures (`clock`,
`controller`) are in tests/conftest.py."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.spread import pb
from twisted.test import iosim

from connscale.records.packed import pack_pieces, unpack
from connscale.config.loader import parse_config
from connscale.control.auth import Credentials
from connscale.control.channel import TLSFactory, client_options
from connscale.control.controller import Controller
from connscale.control.guard import ControlClientFactory
from connscale.control.login import authenticate
from connscale.procs.records import ClientSpec, WorkerOrder

SECRET = b"sesame-open-up"


class FakeMind(pb.Referenceable):
    """An agent's mind: records orders, answers with canned data."""

    def __init__(self, budget: int = 19900, workers: int = 0) -> None:
        self.budget = budget
        self.workers = workers
        self.ensure_calls: list[int] = []
        self.applied: list[list[Any]] = []
        self.rates: list[float] = []
        self.shutdowns = 0
        self.report: dict[str, Any] = {
            "totals": {"open": 0, "opened": 0, "closed": 0, "pings": 0, "pongs": 0, "skipped": 0,
                       "failures": {}, "protocol": {}},
            "rtt": "",
            "workers": [],
            "connecting": 0,
            "events": [],
        }
        # Set to a Deferred to hold `apply` answers back (simulates a slow agent).
        self.hold_apply: defer.Deferred[None] | None = None
        self.packed_calls = 0

    def remote_ensure_workers(self, count: int, target: int | None = None) -> list[int]:
        self.ensure_calls.append(count)
        self.workers = max(self.workers, count)
        return [self.budget] * self.workers

    def remote_apply_packed(self, pieces: Any) -> Any:
        # The orders as the agent reads them: typed, checked records.
        self.applied.append([WorkerOrder.from_wire(r) for r in unpack(pieces)])
        return self.hold_apply

    def remote_report_packed(self) -> list[str]:
        self.packed_calls += 1
        return pack_pieces(self.report)

    def remote_set_rate(self, rate: float) -> None:
        self.rates.append(rate)

    def remote_shutdown(self) -> None:
        self.shutdowns += 1


def tls_client(factory: Any) -> TLSFactory:
    """`factory` behind TLS as a peer dials the hub (channel.client_options, unverified)."""
    return TLSFactory(client_options("127.0.0.1"), True, factory, clock=Clock())


class Link:
    """One in-memory PB connection to the controller's control port (TLS, login gate, guarded broker)."""

    def __init__(self, controller: Controller, peer: str = "127.0.0.1") -> None:
        self.server_factory = controller.server_factory()
        self.client_factory = ControlClientFactory()
        self.perspective: Any = None
        client_tls = tls_client(self.client_factory)
        self.client, self.server, self.pump = iosim.connectedServerAndClient(
            lambda: self.server_factory.buildProtocol(None),
            lambda: client_tls.buildProtocol(None),
            # Every test connection comes from one address, as a real peer's would.
            serverTransportFactory=lambda proto: iosim.FakeTransport(
                proto, isServer=True, peerAddress=IPv4Address("TCP", peer, 40000)),
        )

        #: The hub's end of this connection (inside its TLS layer, which forgets it at the end).
        self.broker = self.server.wrappedProtocol

    def login(self, user: bytes, secret: bytes = SECRET, mind: Any = None) -> Any:
        d = self.client_factory.getRootObject().addCallback(
            authenticate, user.decode("utf-8"), Credentials.from_secret(secret), mind, "127.0.0.1:8790")
        # Held: PB logs an avatar out as soon as the client drops its perspective.
        self.perspective = self.wait(d)
        if isinstance(self.perspective, Failure):
            self.drop()  # as dial.login does: a failed login hangs up (and frees its peer's turn)
        return self.perspective

    def wait(self, d: defer.Deferred[Any]) -> Any:
        """Pump until `d` fires; return its result or the Failure."""
        self.pump.flush()
        assert d.called, "no answer over the in-memory connection"
        out: list[Any] = []
        d.addBoth(out.append)
        return out[0]

    def drop(self) -> None:
        self.client.transport.loseConnection()
        self.pump.flush()


def make_cfg(server: str = "127.0.0.1:8989-8990", **client: Any):  # type: ignore[no-untyped-def]
    """The hub serves `server` (interface:ports); agents are routed there."""
    interface, _, ports = server.rpartition(":")
    return parse_config({"server": {"interface": interface, "ports": ports}, "client": client,
                         "control": {"secret": SECRET.decode()}})


def agent_info(**extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"host": "loadgen-1", "pid": 4242, "cores": 4, "budget": 19900, "source_ips": [],
                            "ephemeral": 28232, "configured_workers": "auto", "workers": 0,
                            "worker_targets": []}
    info.update(extra)
    return info


def register(controller: Controller, name: str = "x", mind: FakeMind | None = None,
             **info: Any) -> tuple[Link, FakeMind, Any]:
    mind = mind if mind is not None else FakeMind()
    link = Link(controller)
    perspective = link.login(f"agent:{name}".encode(), mind=mind)
    assert not isinstance(perspective, Failure), perspective
    answer = link.wait(perspective.callRemote("register", agent_info(**info)))
    assert not isinstance(answer, Failure), answer
    return link, mind, answer


def run(link: Link, d: defer.Deferred[Any]) -> Any:
    return link.wait(d)


def row_total(orders: list[WorkerOrder]) -> int:
    return sum(o.target for o in orders)


def targets(orders: list[WorkerOrder]) -> list[int]:
    return [o.target for o in orders]


class StubSupervisor:
    """An agent's supervisor without processes: budgets as given, orders noted."""

    def __init__(self, budgets: list[int]) -> None:
        self.slots = [type("Slot", (), {"budget": b, "target": 0, "routes": ()})() for b in budgets]
        self.applied: list[list[WorkerOrder]] = []
        self.ensured: list[int] = []
        self.spec = ClientSpec(rate=100.0)
        self.events: list[str] = []

    def apply(self, orders: list[WorkerOrder]) -> defer.Deferred[None]:
        self.applied.append(list(orders))
        for slot, order in zip(self.slots, orders):
            slot.target = order.target
        return defer.succeed(None)

    def ensure(self, n: int) -> defer.Deferred[list[int]]:
        self.ensured.append(n)
        return defer.succeed([s.budget for s in self.slots])
