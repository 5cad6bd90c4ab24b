"""Certificates made on the spot: `server.tls: auto`, and the test suite's CAs and servers.

`auto` makes one ECDSA P-256 key and a self-signed certificate for the run (P-256: a
server's handshake costs a fraction of an RSA-2048 one), named for every address the
run's clients may dial. The key is written 0600 in a 0700 directory of the run (never
in the source tree), and the run's own clients trust that certificate (`client.tls.ca_file`),
so verification stays on.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connscale.config.tls import ServerTLSSettings

#: How long a certificate made for a run is valid: runs last minutes, a hub may stay up for days.
AUTO_VALID = datetime.timedelta(days=30)
#: The names an `auto` certificate carries besides the server's own interface.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def certificate(key: Any, names: Sequence[str], issuer: tuple[Any, Any] | None = None, *,
                common_name: str = "connscale", ca: bool = False,
                not_before: datetime.datetime | None = None, not_after: datetime.datetime | None = None) -> Any:
    """An X.509 certificate for `key` naming `names` (DNS names or IP addresses) in its SAN.

    `issuer` is (its certificate, its key); None: self-signed. Valid from an hour ago
    (clocks differ a little) for AUTO_VALID unless told otherwise."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_cert, issuer_key = issuer if issuer is not None else (None, key)
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(hours=1))
        .not_valid_after(not_after or now + AUTO_VALID)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pem(directory: Path, stem: str, cert: Any, key: Any = None) -> tuple[str, str | None]:
    """`stem.crt` (0644) and, with a key, `stem.key` (0600) in `directory` (made 0700)."""
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path = directory / f"{stem}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is None:
        return str(cert_path), None
    key_path = directory / f"{stem}.key"
    # Created 0600, never readable by others even for a moment.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return str(cert_path), str(key_path)


def auto_names(interface: str) -> tuple[str, ...]:
    """What an `auto` certificate names: the server's interface (unless a wildcard) and loopback."""
    names = [] if interface in ("0.0.0.0", "::", "") else [interface]
    return tuple(dict.fromkeys([*names, *LOCAL_NAMES]))


def make_auto(directory: Path, interface: str) -> ServerTLSSettings:
    """`server.tls: auto` made real: a key and a self-signed certificate in `directory`."""
    key = new_key()
    cert = certificate(key, auto_names(interface), common_name="connscale server (auto)")
    cert_path, key_path = write_pem(directory, "server", cert, key)
    return ServerTLSSettings(enabled=True, auto=True, cert=cert_path, key=key_path)
