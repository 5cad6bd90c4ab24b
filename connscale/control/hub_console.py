"""The hub's console: its namespace (every verb of `verbs.VERBS`, checked by the controller)
and where it keeps its ssh host key between runs."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import IService
from twisted.internet import defer

from connscale.config.settings import ControlSettings
from connscale.control.controller import Controller
from connscale.control.errors import StartError
from connscale.control.secret import config_dir
from connscale.control.verbs import VERBS, Verb, describe
from connscale.metrics.render import render_stats


def console_namespace(controller: Controller) -> dict[str, Any]:
    """The console's verbs: every verb of `verbs.VERBS`, checked by the controller.

    `stats()` prints the summary `connscale ctl stats` prints; `stats_raw()`
    answers the whole dict.
    """

    def make(verb: Verb) -> Callable[..., defer.Deferred[Any]]:
        def call(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            d = controller.call(verb.name, args, kwargs)
            return d.addCallback(render_stats) if verb.name == "stats" else d

        call.__name__ = call.__qualname__ = verb.name
        call.__doc__ = describe(verb)
        call.__signature__ = verb.python_signature()  # type: ignore[attr-defined]
        return call

    namespace: dict[str, Any] = {verb.name: make(verb) for verb in VERBS}
    # The other spelling of each verb (ctl's short name), where it is a Python name.
    namespace.update({verb.console_alias: namespace[verb.name] for verb in VERBS if verb.console_alias})

    def stats_raw() -> defer.Deferred[dict[str, Any]]:
        """stats_raw(): everything the controller knows, as a dict (the record's wire form)."""
        return controller.call("stats").addCallback(lambda stats: stats.to_wire())

    namespace["stats_raw"] = stats_raw
    return namespace


def state_dir() -> str:
    path = config_dir()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return str(path)


def hub_console(reactor: Any, control: ControlSettings, controller: Controller) -> IService | None:
    """The console `control.console` asks for (None: none); StartError (one line) when it cannot listen."""
    from connscale.control.console import ConsoleError, make_console

    try:
        return make_console(reactor, control, console_namespace(controller), state_dir())
    except ConsoleError as e:
        raise StartError(str(e)) from None
