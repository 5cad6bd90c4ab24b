"""TLS settings of both ends: `client.tls` and `server.tls`, as typed records that cross to workers.

The contract with the rest of connscale (kept stable; `net/tls.py` does the TLS itself):

- `ClientTLSSettings` is what `client.tls` says, whatever set it: the YAML keys (`config.tls_keys`)
  or a URL that names TLS (`rediss://`, `https://`, `wss://`, `mqtts://`, `tls://`: the URL
  parser evolves `cfg.client.tls` with `enabled=True` and, for a host name, `server_name`).
  It travels to client workers in `procs.records.ClientSpec.tls` and reaches the pool as
  `net.pool.PoolSettings.tls`; with `enabled` the pool wraps every connection it dials in
  TLS (`net.tls.ClientTLS.wrap`, the one hook on the dial path), whatever protocol the
  connection speaks inside.
- `ServerTLSSettings` is what `server.tls` says: `auto` (a self-signed certificate made for
  the run) or a certificate and key. `auto` is turned into files before any worker starts
  (`net.tlscert`), so a `ServerSpec.tls` always names `cert` and `key`.

Files named here are checked when the configuration is loaded (`check_*` below, called by
`config.tls_keys`): each problem is one line naming its key. `ssl` and `cryptography` are
imported only inside those checks: worker processes import this module for the records and
start without either.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from connscale.records.base import Record, boolean, field, hostname, number, optional, text

__all__ = [
    "ClientTLSSettings", "ServerTLSSettings", "TLSSetupError", "check_ca_file", "check_cert_pair", "is_self_signed",
    "certificate_problem",
]

_PATH = text(4096)

class TLSSetupError(Exception):
    """TLS settings that cannot make a context (a file changed since the config was read); one line."""


#: Seconds a TLS handshake may take from TCP connected to finished, unless configured.
HANDSHAKE_TIMEOUT = 10.0


@attrs.frozen
class ClientTLSSettings(Record):
    """`client.tls`: how a client speaks TLS to its server (any profile)."""

    enabled: bool = field(boolean, default=False)
    #: Sent as SNI and checked against the server's certificate; None: the host dialled
    #: (an IP address is checked against the certificate's IP addresses and sends no SNI).
    server_name: str | None = field(optional(hostname), default=None)
    #: Check the server's certificate (chain, dates, name); off: any certificate is accepted.
    verify: bool = field(boolean, default=True)
    #: PEM file of the CAs trusted (a self-signed server's own certificate works); None: the system's.
    ca_file: str | None = field(optional(_PATH), default=None)
    #: The client's certificate (PEM) and its private key (None: in the certificate's file).
    cert: str | None = field(optional(_PATH), default=None)
    key: str | None = field(optional(_PATH), default=None)
    #: A connection opened again on a route resumes a session an earlier one of that route left.
    resume: bool = field(boolean, default=True)
    #: Seconds from TCP connected to the handshake finished before it fails as `tls_handshake_timeout`.
    handshake_timeout: float = field(number(0.001, 3600.0), default=HANDSHAKE_TIMEOUT)


@attrs.frozen
class ServerTLSSettings(Record):
    """`server.tls`: connscale's own server answers over TLS (any framing it serves)."""

    enabled: bool = field(boolean, default=False)
    #: `server.tls: auto`: a self-signed certificate is made for the run (see net.tlscert).
    auto: bool = field(boolean, default=False)
    cert: str | None = field(optional(_PATH), default=None)
    #: Its private key; None: in the certificate's file.
    key: str | None = field(optional(_PATH), default=None)


# ---------------------------------------------------------------- file checks (lazy imports)

def _ssl_reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    return " ".join(str(error).split())[:120]


def check_ca_file(path: str) -> str | None:
    """None if `path` holds at least one PEM certificate OpenSSL loads as a CA, else why not."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as e:
        return f"not a PEM certificate file: {path} ({_ssl_reason(e)})"
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if not ctx.cert_store_stats()["x509_ca"] and not ctx.cert_store_stats()["x509"]:
        return f"holds no certificate: {path}"
    return None


def check_cert_pair(cert: str, key: str | None) -> tuple[str, str] | None:
    """None if the certificate and its key load and match; else (which key is wrong, why)."""
    import ssl

    from cryptography.hazmat.primitives import serialization

    try:
        certificate = _load_certificate(cert)
    except OSError as e:
        return "cert", f"cannot read {cert}: {e.strerror}"
    except ValueError:
        return "cert", f"not a PEM certificate: {cert}"
    where = key if key is not None else cert
    try:
        with open(where, "rb") as f:
            private = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        return "key", f"cannot read {where}: {e.strerror}"
    except TypeError:
        return "key", f"encrypted with a passphrase (connscale needs it unencrypted): {where}"
    except ValueError:
        if key is None:
            return "key", f"required: {cert} holds no private key"
        return "key", f"not a PEM private key: {key}"
    if private.public_key() != certificate.public_key():
        return "key", f"does not match the certificate {cert}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        return "cert", f"OpenSSL cannot use {cert}: {_ssl_reason(e)}"
    return None


def _load_certificate(path: str) -> Any:
    from cryptography import x509

    with open(path, "rb") as f:
        data = f.read()
    return x509.load_pem_x509_certificate(data)


def certificate_problem(path: str, now: datetime.datetime | None = None) -> str | None:
    """Why the (first) certificate in `path` cannot serve now: expired or not valid yet; else None."""
    try:
        cert = _load_certificate(path)
    except (OSError, ValueError) as e:
        return f"not a PEM certificate: {path} ({' '.join(str(e).split())[:80]})"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: {path}"
    if cert.not_valid_before_utc > now:
        return f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: {path}"
    return None


def is_self_signed(path: str) -> bool:
    """Whether the (first) certificate in `path` is its own issuer (no CA vouches for it)."""
    try:
        cert = _load_certificate(path)
    except (OSError, ValueError):
        return False
    return bool(cert.issuer == cert.subject)
