"""Certificates made by the test that uses them (in its tmp_path: no key is ever committed).

`Pki(tmp_path)` holds a CA the clients trust, one they do not, and makes server
certificates of every kind the handshake tests need: good, for another name,
signed by the unknown CA, expired, not valid yet, and a client certificate.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from connscale.config.tls import ServerTLSSettings
from connscale.net.tlscert import certificate, new_key, write_pem

LOOPBACK = ("127.0.0.1", "localhost")


class Pki:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_key = new_key()
        self.ca = certificate(self.ca_key, (), common_name="connscale test CA", ca=True)
        self.ca_file, _ = write_pem(directory, "ca", self.ca)
        self.rogue_key = new_key()
        self.rogue = certificate(self.rogue_key, (), common_name="a CA nobody trusts", ca=True)

    def issue(self, stem: str, names: tuple[str, ...] = LOOPBACK, *, rogue: bool = False,
              days: tuple[float, float] = (-1, 30)) -> tuple[str, str]:
        """A certificate and key for `names`, valid from now+days[0] to now+days[1]."""
        now = datetime.datetime.now(datetime.timezone.utc)
        key = new_key()
        issuer: tuple[Any, Any] = (self.rogue, self.rogue_key) if rogue else (self.ca, self.ca_key)
        cert = certificate(key, names, issuer, common_name=stem,
                           not_before=now + datetime.timedelta(days=days[0]),
                           not_after=now + datetime.timedelta(days=days[1]))
        cert_path, key_path = write_pem(self.dir, stem, cert, key)
        assert key_path is not None
        return cert_path, key_path

    def server(self, stem: str = "server", **kw: Any) -> ServerTLSSettings:
        cert, key = self.issue(stem, **kw)
        return ServerTLSSettings(enabled=True, cert=cert, key=key)
