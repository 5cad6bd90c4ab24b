"""The control connection's TLS channel, on both ends, and the value a login binds to.

Every control connection is TLS (1.3): a hub listening on `tcp:` or `unix:`
wraps its factory in TLS with a certificate it makes for itself at start (a
fresh EC key, never written anywhere); `ssl:` uses the configured certificate.
A peer does not need to verify a self-made certificate: the login (`auth`) is
bound to this channel's exporter value, which only the two ends of one TLS
session share, so a peer that reached someone else's TLS endpoint (a relay)
cannot log in through it. With `control.tls_ca` the peer verifies the hub's
certificate too (names and a CA the operator chose).
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.internet import endpoints, ssl
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

__all__ = ["EXPORTER_LABEL", "TLSFactory", "binding", "client_endpoint", "hub_options", "wrap_server"]

#: RFC 5705 / 8446 exporter label of the login's channel binding.
EXPORTER_LABEL = b"EXPORTER-connscale-login"
_TLS13 = ssl.TLSVersion.TLSv1_3


def hub_options() -> ssl.CertificateOptions:
    """TLS server options with a certificate made now (EC P-256, self-signed, 10 years)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from OpenSSL import crypto

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connscale hub")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    return ssl.CertificateOptions(privateKey=crypto.PKey.from_cryptography_key(key),
                                  certificate=crypto.X509.from_cryptography(cert), raiseMinimumTo=_TLS13)


class TLSFactory(TLSMemoryBIOFactory):
    """TLS that writes what PB writes at once. (Twisted's default protocol gathers small
    writes until the global reactor's next turn; PB writes one piece per message anyway,
    and the hub's clock is injected, not the global reactor.)"""

    protocol = TLSMemoryBIOProtocol
    noisy = False


def wrap_server(factory: Any, options: ssl.CertificateOptions | None = None) -> TLSMemoryBIOFactory:
    """`factory` behind TLS (for `tcp:` and `unix:` control endpoints)."""
    return TLSFactory(options or hub_options(), False, factory, clock=getattr(factory, "clock", None))


def client_options(host: str, tls_ca: str | None = None) -> Any:
    """TLS 1.3 to the hub: verified against `tls_ca` when given, else unverified (the login
    is bound to the channel, see the module docstring)."""
    if not tls_ca:
        return ssl.CertificateOptions(raiseMinimumTo=_TLS13)
    with open(tls_ca, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(host, trustRoot=authority)


def client_endpoint(reactor: Any, host: str, port: int, tls_ca: str | None = None,
                    timeout: float = 10) -> IStreamClientEndpoint:
    tcp = endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.wrapClientTLS(client_options(host, tls_ca), tcp)


def binding(transport: Any) -> bytes | None:
    """The TLS exporter value of this connection (the same at both ends of one session),
    or None when the connection is not TLS or its handshake is not done."""
    from OpenSSL.SSL import Connection, Error

    get = getattr(transport, "getHandle", None)
    handle = get() if get is not None else None
    if not isinstance(handle, Connection):
        return None
    try:
        return bytes(handle.export_keying_material(EXPORTER_LABEL, 32))
    except Error:
        return None
