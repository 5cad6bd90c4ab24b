"""Records a parent and its workers exchange, and the orders an agent passes on to them.

A worker is started with a `ClientSpec` or `ServerSpec` (JSON on its command line),
answers `hello` with a `WorkerHello`, and takes `WorkerOrder`s (a target and the
routes it may use). The controller sends an agent one `WorkerOrder` per worker, so
the same record is checked at both PB boundaries it crosses. `WorkerRow` (how a
supervisor describes one of its workers in reports) and `WorkerLoss` live in
`metrics.workers`, with the timeline that carries them.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import attrs

from connscale.records.base import (
    Record, RecordError, boolean, choice, field, hostname, integer, ip_or_empty, loose, nested, number, optional, seq,
    text,
)
from connscale.config.target import ProfileOptions
from connscale.config.tls import ClientTLSSettings, ServerTLSSettings
# Defined with the timeline that carries them; imported from here by the supervisors that make them.
from connscale.metrics.workers import MAX_LOSSES, MAX_WORKER_TARGET, WorkerLoss, WorkerRow  # noqa: F401
from connscale.net.routes import Route
from connscale.procs.child import PASSWORD_VARIABLE

#: Routes in one order: source IPs × server ports.
MAX_ROUTES = 16384
#: One route's quota never exceeds the ephemeral port range.
MAX_QUOTA = 65536
FRAMINGS = ("line", "raw")
#: What connscale's own server speaks: the client framings and WebSocket (net/wsserver).
SERVER_FRAMINGS = ("line", "raw", "websocket")


_ROUTE_PARTS = (("source", ip_or_empty), ("host", hostname), ("port", integer(1, 65535)),
                ("quota", integer(0, MAX_QUOTA)))


#: Routes already checked, by their row (with each part's type, so that True is
#: not taken for 1): a million's orders carry 53 workers x 640 routes, all but
#: 640 of them repeats, and checking each address with `ipaddress` took the agent
#: ~0.3-0.9 s of CPU per ramp step.
_ROUTES_SEEN: dict[tuple[object, ...], Route] = {}
_ROUTES_SEEN_MAX = 1 << 16


def route(value: object) -> Route:
    """A route on the wire is a compact row [src or "", host, port, quota]."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise RecordError("a route is [source, host, port, quota]")
    key = tuple((type(part), part) for part in value if type(part) in (str, int))
    if len(key) == 4:
        hit = _ROUTES_SEEN.get(key)
        if hit is not None:
            return hit
    found = _checked_route(value)
    if len(key) == 4:
        if len(_ROUTES_SEEN) >= _ROUTES_SEEN_MAX:
            _ROUTES_SEEN.clear()
        _ROUTES_SEEN[key] = found
    return found


def _checked_route(value: list[object] | tuple[object, ...]) -> Route:
    parts = {}
    for (name, parse), part in zip(_ROUTE_PARTS, value):
        try:
            parts[name] = parse(part)
        except RecordError as e:
            raise RecordError(f"route {list(value)!r:.60}: {name}: {e}") from None
    return Route(parts["source"] or None, parts["host"], parts["port"], parts["quota"])


def route_row(r: Route) -> list[object]:
    return [r.src or "", r.host, r.port, r.quota]


@attrs.frozen
class WorkerOrder(Record):
    """Hold `target` connections over `routes` (each with its share of a tuple's ports).

    `rate` is this worker's share of its agent's connect rate (connects per
    second); an agent fills it in for its workers, the controller leaves it out.
    """

    target: int = field(integer(0, MAX_WORKER_TARGET))
    routes: tuple[Route, ...] = field(seq(route, MAX_ROUTES), default=())
    rate: float | None = field(optional(number(0, 10_000_000, open_low=True)), default=None)

    def to_wire(self) -> dict[str, object]:
        wire: dict[str, object] = {"target": self.target, "routes": [route_row(r) for r in self.routes]}
        if self.rate is not None:
            wire["rate"] = self.rate
        return wire

    @property
    def capacity(self) -> int:
        return sum(r.quota for r in self.routes)


@attrs.frozen
class WorkerHello(Record):
    """A worker's first answer: it started, and this is its fd budget."""

    pid: int = field(integer(1))
    role: str = field(choice("server", "client"))
    budget: int = field(integer(0, 1 << 30))


_label = text(128, r"[A-Za-z0-9._:-]+", "a worker label")


@attrs.frozen
class ClientSpec(Record):
    """How a client worker's connections behave (the pool's settings)."""

    interval: float = field(number(0.001, 86400), default=5.0)
    timeout: float = field(number(0.001, 86400), default=1.0)
    rate: float = field(number(0, 10_000_000, open_low=True), default=2000.0)
    framing: str = field(choice(*FRAMINGS), default="line")
    close: str = field(choice("fin", "rst"), default="fin")
    #: connscale's own transports (net.fastpath), or Twisted's.
    fast_path: bool = field(boolean, default=True)
    tls: ClientTLSSettings = field(nested(ClientTLSSettings), factory=ClientTLSSettings)
    name: str = field(_label, default="client-worker")
    index: int = field(integer(0, 4096), default=0)
    #: What the connections speak (net/profiles); its password never rides here (`with_password`).
    profile: ProfileOptions = field(nested(ProfileOptions), default=ProfileOptions())
    role = "client"


@attrs.frozen
class ServerSpec(Record):
    """Where a server worker listens and how it answers."""

    interface: str = field(hostname, default="127.0.0.1")
    ports: tuple[int, ...] = field(seq(integer(1, 65535), 65535), default=(8989,))
    backlog: int = field(integer(1, 1 << 20), default=4096)
    framing: str = field(choice(*SERVER_FRAMINGS), default="line")
    max_line: int = field(integer(1, 1 << 24), default=1024)
    fast_path: bool = field(boolean, default=True)
    #: Its certificate and key are files by now (`auto` was made into them before any worker started).
    tls: ServerTLSSettings = field(nested(ServerTLSSettings), factory=ServerTLSSettings)
    name: str = field(_label, default="server-worker")
    index: int = field(integer(0, 4096), default=0)
    role = "server"


WorkerSpec = ClientSpec | ServerSpec
SPECS: dict[str, Any] = {"client": ClientSpec, "server": ServerSpec}


def without_password(spec: WorkerSpec) -> tuple[WorkerSpec, dict[str, str]]:
    """`spec` fit for a command line, and the environment that carries its password."""
    if not isinstance(spec, ClientSpec) or spec.profile.password is None:
        return spec, {}
    return (attrs.evolve(spec, profile=attrs.evolve(spec.profile, password=None)),
            {PASSWORD_VARIABLE: spec.profile.password})


def with_password(spec: WorkerSpec, environ: MutableMapping[str, str]) -> WorkerSpec:
    """`spec` with the password its parent put in `environ` (taken out of it: nothing the
    worker starts inherits it)."""
    password = environ.pop(PASSWORD_VARIABLE, None)
    if password is None or not isinstance(spec, ClientSpec):
        return spec
    return attrs.evolve(spec, profile=attrs.evolve(spec.profile, password=ProfileOptions.from_wire(
        {"password": password}).password))


_EXTRA_COUNT = integer(0, 1 << 62)


def check_worker_snapshot(data: object) -> dict[str, Any]:
    """A worker's `snapshot` answer, checked where it enters its parent: the counters
    strictly (`metrics.snapshot.snapshot_from_wire`), the pool's gauges as counts, the
    resource and load readings as bounded plain data. Returns the same plain dict."""
    from connscale.metrics.snapshot import snapshot_from_wire

    if not isinstance(data, dict):
        raise RecordError(f"worker snapshot: expected a mapping, got a {type(data).__name__}")
    try:
        snapshot_from_wire({k: v for k, v in data.items() if k not in _SNAPSHOT_EXTRAS})
        for key in ("established", "connecting", "pending"):
            if key in data:
                _EXTRA_COUNT(data[key])
        for key in ("resources", "load"):
            if key in data:
                loose()(data[key])
    except RecordError as e:
        raise RecordError(f"worker snapshot: {e}") from None
    return data


_SNAPSHOT_EXTRAS = frozenset({"established", "connecting", "pending", "resources", "load"})
