"""`client_start` of a `clients:` entry: run its agent (or observer) over ssh, wait for it to register.

The controller's `launcher`: `launch` builds and runs the ssh command; this is the part that
needs the controller (the hub's address to dial back, the name's own key, its registry).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from connscale.config.endpoints import dial_address
from connscale.config.settings import ClientHost, Config
from connscale.control.controller import Controller, ControlError
from connscale.deadline import unless_fired

log = Logger(namespace="connscale.hub")

REGISTER_TIMEOUT = 60.0


def control_address(cfg: Config) -> tuple[str, int]:
    address = dial_address(cfg.control.listen)
    if address is None:
        raise ControlError("remote agents need a tcp: or ssl: control.listen")
    return address


def launch_client(controller: Controller, host: ClientHost) -> defer.Deferred[str]:
    """`client_start`: run the agent over ssh, wait for it to register."""
    from connscale.control import launch

    reactor = controller.reactor
    master_host, master_port = host.master or control_address(controller.cfg)
    master = f"{master_host}:{master_port}"
    # An entry with `observe:` starts an observer of that server there, not an agent.
    argv = (launch.remote_observer_argv(host, master) if host.observe
            else launch.remote_agent_argv(host, master, launch.run_flags(controller.cfg.client)))
    registry = controller.registry_of(host)
    name = host.name

    def line(text: str) -> None:
        log.info("[{name}] {line}", name=name, line=text)

    # The remote agent (or observer) gets its own name's key, never the secret: it can log in
    # as that name and nothing more (no orders, no launches, no other name) if its host is taken.
    launched = launch.launch(reactor, host, argv, launch.stdin_for(host, controller.agent_line(name)), line)
    registered = registry.wait_registered(name)
    result: defer.Deferred[str] = defer.Deferred()

    def on_registered(_: Any) -> None:
        if not result.called:
            registry.agents[name].launch = launched
            controller.note(f"client {name} started on {host.host} over ssh")
            result.callback(name)

    def on_ended(code: int) -> None:
        if not result.called:
            result.errback(ControlError(launch.explain_failure(host, code, launched.stderr_tail)))
        elif registry.agents.get(name) and registry.agents[name].launch is launched:
            controller.note(f"client {name}: ssh session ended (exit {code})")

    def on_timeout() -> None:
        if not result.called:
            launched.stop()
            result.errback(ControlError(f"{name}: agent did not register within {REGISTER_TIMEOUT:g}s"))

    registered.addCallback(on_registered)
    launched.ended.addCallback(on_ended)
    return unless_fired(reactor, result, REGISTER_TIMEOUT, on_timeout)
