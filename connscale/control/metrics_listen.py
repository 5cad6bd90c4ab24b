"""The hub's Prometheus endpoint (`control.metrics_listen`): /metrics from the timeline records.

Its own room because its one rule is not the controller's: no login protects it, so a
tcp: endpoint without an interface means loopback, and beyond loopback is warned about.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from connscale.config.endpoints import binds_loopback, endpoint_parts
from connscale.control.controller import Controller
from connscale.control.errors import StartError
from connscale.net.listen import EndpointService, ListenError

log = Logger(namespace="connscale.hub")


def metrics_endpoint(endpoint: str) -> tuple[str, bool]:
    """(the endpoint to listen on, whether it is reachable beyond loopback).

    A tcp: endpoint without an interface means loopback here, not every
    interface as Twisted would have it: the numbers carry the run's
    addresses and no login protects them. Beyond loopback must be asked for
    (interface=0.0.0.0) and is warned about.
    """
    kind, positional, keywords = endpoint_parts(endpoint)
    if kind == "tcp" and "interface" not in keywords and len(positional) < 2:
        return f"{endpoint}:interface=127.0.0.1", False
    return endpoint, not binds_loopback(endpoint)


def serve_metrics(reactor: Any, controller: Controller, endpoint: str, prog: str = "hub") -> Service:
    """Prometheus /metrics from the timeline records, on `control.metrics_listen`."""
    from connscale.metrics.prometheus import TimelineCollector, metrics_site

    collector = TimelineCollector()
    controller.collector.listeners.append(collector.observe)
    endpoint, exposed = metrics_endpoint(endpoint)
    try:
        service = EndpointService(reactor, endpoint, metrics_site(collector), "control.metrics_listen",
                                  listen_now=True, label="metrics")
    except ListenError as e:
        raise StartError(str(e)) from None
    if exposed:
        # The numbers carry addresses of the run and no login protects them.
        log.warn("{prog}: control.metrics_listen {endpoint} is reachable beyond loopback and asks for no login",
                 prog=prog, endpoint=endpoint)
    log.info("{prog}: Prometheus metrics on {endpoint} at /metrics", prog=prog, endpoint=endpoint)
    return service
