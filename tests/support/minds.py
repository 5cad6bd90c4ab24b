"""A fake agent mind for the controller's parts (registry, orders, collect) driven directly:
each method answered by a handler, or held back (a hung agent); and the helpers they share."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from connscale.records.packed import pack_pieces, unpack
from connscale.control.records import AgentInfo, AgentReport
from connscale.procs.records import WorkerOrder


class Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


class Broker:
    def __init__(self) -> None:
        self.transport = Transport()


class Mind:
    """A fake agent mind: answers each method with a handler, or holds the answer back."""

    def __init__(self, **handlers: Callable[..., Any]) -> None:
        self.broker = Broker()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.handlers: dict[str, Callable[..., Any]] = {
            "ensure_workers": lambda n, target=None: [19900] * n,
            "apply_packed": lambda pieces: None,
            "report_packed": lambda: AgentReport().to_wire(),
            "set_rate": lambda rate: None,
        }
        self.handlers.update(handlers)
        self.held: list[defer.Deferred[Any]] = []

    def callRemote(self, method: str, *args: Any) -> defer.Deferred[Any]:
        self.calls.append((method, args))
        handler = self.handlers.get(method)
        if handler is None:  # never answers: a hung agent
            d: defer.Deferred[Any] = defer.Deferred()
            self.held.append(d)
            return d
        d = defer.maybeDeferred(handler, *args)
        if method == "report_packed":  # packed as a real agent packs it (control.agent.AgentMind)
            d.addCallback(lambda answer: pack_pieces(answer) if isinstance(answer, dict) else answer)
        return d

    def orders(self) -> list[list[WorkerOrder]]:
        return [[WorkerOrder.from_wire(r) for r in unpack(args[0])] for m, args in self.calls if m == "apply_packed"]


def info(**extra: Any) -> AgentInfo:
    data = {"host": "loadgen-1", "pid": 4242, "budget": 19900, "ephemeral": 28232}
    data.update(extra)
    return AgentInfo.from_wire(data)


def result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]
