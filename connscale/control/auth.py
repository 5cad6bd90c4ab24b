"""The control plane's keys and proofs (no network here: `login` speaks them over PB).

A login is mutual, and the hub proves first:

1. the peer (agent, ctl, run) sends its name and a fresh 32-byte nonce;
2. the hub answers its own nonce and HMAC-SHA256(role key, "hub" | name | both
   nonces); the peer checks it and, if the hub does not know the key, hangs up
   without having proved anything itself (a hub that is not ours cannot give
   orders, and captures nothing);
3. the peer sends HMAC-SHA256(role key, "peer" | name | both nonces).

Nonces come from `os.urandom`, proofs are compared in constant time. The role key
is derived from the shared secret by scrypt (about 0.1 s and 32 MiB, once per
process), then HMAC per role: whoever records an exchange, or asks a hub for a
proof, pays a scrypt per guess of the secret. Roles: an `agent` key can only log
in as an agent; `operator` verbs (orders, ssh launch) need the operator key,
which only the secret gives. A hub hands an ssh-launched agent its agent key,
never the secret (`Credentials.agent_line`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os

__all__ = [
    "AGENT_KEY_PREFIX", "NONCE_BYTES", "ROLES", "Credentials", "CredentialError", "proof", "role_of",
]

ROLES = ("agent", "operator")
NONCE_BYTES = 32
#: A secret-file line holding an agent key instead of the secret.
AGENT_KEY_PREFIX = b"connscale-agent-key:"
_SALT = b"connscale control v1"
# scrypt cost: 2**15 x 8 x 128 B = 32 MiB and ~0.1 s here, per guess for an attacker.
_N, _R, _P = 2**15, 8, 1


class CredentialError(Exception):
    """These credentials cannot log in in that role; one line."""


@functools.lru_cache(maxsize=8)
def _master(secret: bytes) -> bytes:
    return hashlib.scrypt(secret, salt=_SALT, n=_N, r=_R, p=_P, dklen=32, maxmem=64 * 1024 * 1024)


def _role_key(master: bytes, role: str) -> bytes:
    return hmac.new(master, b"connscale role " + role.encode(), hashlib.sha256).digest()


def proof(key: bytes, side: str, username: str, peer_nonce: bytes, hub_nonce: bytes) -> bytes:
    """What `side` ("hub" or "peer") sends to prove it holds `key` for this exchange."""
    message = b"\0".join([side.encode(), username.encode("utf-8"), peer_nonce, hub_nonce])
    return hmac.new(key, message, hashlib.sha256).digest()


def role_of(username: str) -> str:
    """"operator" or "agent" (from "agent:NAME"); CredentialError for anything else."""
    kind, sep, _ = username.partition(":")
    if kind == "operator" and not sep:
        return "operator"
    if kind == "agent" and sep:
        return "agent"
    raise CredentialError(f"unknown role in login name {username[:40]!r}")


class Credentials:
    """What a process holds: the secret (every role), or one agent's key (agent only)."""

    def __init__(self, keys: dict[str, bytes], whole_secret: bool) -> None:
        self._keys = keys
        self.whole_secret = whole_secret

    @classmethod
    def from_secret(cls, secret: bytes) -> Credentials:
        """From a configured secret, or from an agent-key line a hub handed out."""
        value = secret.strip()
        if value.startswith(AGENT_KEY_PREFIX):
            try:
                key = bytes.fromhex(value[len(AGENT_KEY_PREFIX):].decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise CredentialError("the agent key is not hex") from None
            if len(key) != 32:
                raise CredentialError("the agent key has the wrong length")
            return cls({"agent": key}, whole_secret=False)
        master = _master(value)
        return cls({role: _role_key(master, role) for role in ROLES}, whole_secret=True)

    def key(self, role: str) -> bytes:
        try:
            return self._keys[role]
        except KeyError:
            raise CredentialError(
                f"these credentials are an agent key: logging in as {role} needs the control secret"
            ) from None

    def agent_line(self) -> bytes:
        """The secret-file line that lets a remote agent log in as an agent, and only that."""
        return AGENT_KEY_PREFIX + self.key("agent").hex().encode()

    @staticmethod
    def nonce() -> bytes:
        return os.urandom(NONCE_BYTES)
