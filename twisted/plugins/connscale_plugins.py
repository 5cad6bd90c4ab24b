from twisted.application.service import ServiceMaker

connscale_server = ServiceMaker(
    "connscale-server",
    "connscale.app.tap_server",
    "connscale ping/pong server and controller hub",
    "connscale-server",
)
connscale_client = ServiceMaker(
    "connscale-client",
    "connscale.app.tap_client",
    "connscale client agent: holds N pinging connections",
    "connscale-client",
)
connscale_observe = ServiceMaker(
    "connscale-observe",
    "connscale.app.tap_observe",
    "connscale observer: watches the server under test and its host, reports to a hub",
    "connscale-observe",
)
