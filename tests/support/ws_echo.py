"""A WebSocket echo server on autobahn, for the tests: `python -m tests.support.ws_echo PORT MAX_CONNECTIONS`.

autobahn answers ping frames with pong frames by itself and, past `maxConnections`
(0: no cap), refuses the upgrade with `503 Service Unavailable`.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    port, cap = int(argv[0]), int(argv[1])

    class Echo(WebSocketServerProtocol):
        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload, isBinary)

    factory = WebSocketServerFactory(f"ws://127.0.0.1:{port}")
    factory.protocol = Echo
    # No pings of its own (the clients ping), a generous opening handshake for a busy box.
    factory.setProtocolOptions(maxConnections=cap, autoPingInterval=0, openHandshakeTimeout=60)
    reactor.listenTCP(port, factory, backlog=4096, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
