"""The control plane's keys and the login exchange's arithmetic (no network here:
`login` speaks it over PB, `channel` gives it the TLS channel it binds to).

A login is SPAKE2 (the PAKE magic-wormhole uses) over the control connection's
TLS channel, then a key confirmation in which the hub proves first:

1. the peer (agent, ctl, run) says who it is (`operator` or `agent:NAME`) and
   which hub it dialled; the hub answers its deployment salt;
2. the peer sends its SPAKE2 message; the hub answers its own and
   HMAC(session key, "hub"); the peer checks it and, if the hub does not know
   the password, hangs up without having proved anything;
3. the peer sends HMAC(session key, "peer").

Both SPAKE2 identities carry the transcript (`transcript`): the role and agent
name, the hub as dialled, the salt, and the TLS channel's exporter value
(RFC 5705/8446, read from both ends of one TLS session). A relay terminates two
TLS sessions with two different exporter values, so the two ends derive
different keys and the relay gets a refused login and nothing else. SPAKE2
gives neither a passive listener nor an active impostor anything to test
guesses against offline: each guess is one online login, which `login`
throttles.

Keys: the secret gives a master key (scrypt with the hub's random per-deployment
salt, ~0.1 s once per process and salt), and from it one password per role:
the operator's, and the agent root from which each agent name's password is
derived. An agent-key line holds the agent root (any agent name) or one name's
key (that name only, what ssh launch hands out), with the salt it was made for;
neither gives the operator's password, and reversing either into the secret
costs a scrypt per guess of a secret `check_strength` accepted.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re

__all__ = [
    "AGENT_KEY_PREFIX", "ROLES", "SALT_BYTES", "CredentialError", "Credentials", "LoginExchange",
    "check_strength", "confirmation", "parse_username", "role_of", "transcript",
]

ROLES = ("agent", "operator")
SALT_BYTES = 16
#: A secret-file line holding an agent key instead of the secret.
AGENT_KEY_PREFIX = b"connscale-agent-key:"
_KEY_VERSION = b"2"
# scrypt cost: 2**15 x 8 x 128 B = 32 MiB and ~0.1 s here, per guess for whoever holds an agent key.
_N, _R, _P = 2**15, 8, 1
#: What an agent name may look like (as verbs.NAME_PATTERN; repeated here, below verbs).
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: zxcvbn's estimate of guesses below which a secret is refused (10^10: its top score).
MIN_GUESSES_LOG10 = 10.0
#: The fix a refused secret's message gives.
HOW_TO_MAKE_ONE = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


class CredentialError(Exception):
    """These credentials cannot log in in that role; one line."""


def check_strength(secret: bytes, where: str = "the control secret") -> None:
    """Refuse a secret a guesser would find early (by zxcvbn's estimate, not by length:
    `password1` is nine characters and the tenth guess of a short word list)."""
    if secret.startswith(AGENT_KEY_PREFIX):
        return
    text = secret.decode("utf-8", "replace")
    from zxcvbn import zxcvbn

    result = zxcvbn(text[:72])  # its limit; 72 characters say enough
    if float(result["guesses_log10"]) < MIN_GUESSES_LOG10:
        raise CredentialError(
            f"{where} is too weak (about 10^{float(result['guesses_log10']):.0f} guesses to find); {HOW_TO_MAKE_ONE}"
        )


@functools.lru_cache(maxsize=8)
def _master(secret: bytes, salt: bytes) -> bytes:
    return hashlib.scrypt(secret, salt=b"connscale control v2\0" + salt, n=_N, r=_R, p=_P, dklen=32,
                          maxmem=64 * 1024 * 1024)


def _derive(key: bytes, label: str) -> bytes:
    return hmac.new(key, b"connscale " + label.encode("utf-8"), hashlib.sha256).digest()


def _name_key(agent_root: bytes, name: str) -> bytes:
    return _derive(agent_root, f"agent name {name}")


def parse_username(username: str) -> tuple[str, str]:
    """("operator", "") or ("agent", NAME); CredentialError for anything else."""
    kind, sep, name = username.partition(":")
    if kind == "operator" and not sep:
        return "operator", ""
    if kind == "agent" and sep:
        if not _NAME.fullmatch(name):
            raise CredentialError("an agent name is 1-64 letters, digits, '.', '_' or '-'")
        return "agent", name
    raise CredentialError(f"unknown role in login name {username[:40]!r}")


def role_of(username: str) -> str:
    return parse_username(username)[0]


class Credentials:
    """What a process holds: the secret (every role), the agent root (any agent name),
    or one agent name's key (that name only)."""

    def __init__(self, secret: bytes | None = None, agent_root: bytes | None = None,
                 name_key: tuple[str, bytes] | None = None, salt: bytes | None = None) -> None:
        self._secret = secret
        self._agent_root = agent_root
        self._name_key = name_key
        #: The salt an agent key was made for (None for the secret: any salt).
        self.salt = salt

    @property
    def whole_secret(self) -> bool:
        return self._secret is not None

    @classmethod
    def from_secret(cls, secret: bytes) -> Credentials:
        """From a configured secret, or from an agent-key line a hub handed out."""
        value = secret.strip()
        if not value.startswith(AGENT_KEY_PREFIX):
            return cls(secret=value)
        parts = value[len(AGENT_KEY_PREFIX):].split(b":")
        if parts[0] != _KEY_VERSION or len(parts) not in (3, 4):
            raise CredentialError("this agent key is from an older connscale or damaged: "
                                  "make a new one with `connscale agent-key`")
        try:
            salt, key = bytes.fromhex(parts[1].decode("ascii")), bytes.fromhex(parts[-1].decode("ascii"))
            name = parts[2].decode("ascii") if len(parts) == 4 else None
        except (UnicodeDecodeError, ValueError):
            raise CredentialError("the agent key is not hex") from None
        if len(key) != 32 or len(salt) != SALT_BYTES or (name is not None and not _NAME.fullmatch(name)):
            raise CredentialError("the agent key has the wrong length")
        if name is None:
            return cls(agent_root=key, salt=salt)
        return cls(name_key=(name, key), salt=salt)

    def _master(self, salt: bytes) -> bytes:
        assert self._secret is not None
        return _master(self._secret, salt)

    def agent_root(self, salt: bytes) -> bytes:
        if self._secret is not None:
            return _derive(self._master(salt), "role agent")
        if self._agent_root is not None:
            self._check_salt(salt)
            return self._agent_root
        raise CredentialError("this agent key is for one agent name only")

    def _check_salt(self, salt: bytes) -> None:
        if self.salt is not None and not hmac.compare_digest(self.salt, salt):
            raise CredentialError("this agent key was made for another hub (its salt differs): "
                                  "make a new one with `connscale agent-key` against this hub")

    def password(self, username: str, salt: bytes) -> bytes:
        """The SPAKE2 password of `username` (operator or agent:NAME) at a hub of `salt`."""
        role, name = parse_username(username)
        if role == "operator":
            if self._secret is None:
                raise CredentialError("these credentials are an agent key: logging in as operator needs "
                                      "the control secret")
            return _derive(self._master(salt), "role operator")
        if self._name_key is not None:
            self._check_salt(salt)
            owned, key = self._name_key
            if name != owned:
                raise CredentialError(f"this agent key is for agent {owned!r} only, not {name!r}")
            return key
        return _name_key(self.agent_root(salt), name)

    def check_role(self, username: str) -> None:
        """CredentialError now (before any network) if `username` is beyond these credentials."""
        role, name = parse_username(username)
        if role == "operator" and self._secret is None:
            raise CredentialError("these credentials are an agent key: logging in as operator needs "
                                  "the control secret")
        if self._name_key is not None and name != self._name_key[0]:
            raise CredentialError(f"this agent key is for agent {self._name_key[0]!r} only, not {name!r}")

    def agent_line(self, salt: bytes, name: str | None = None) -> bytes:
        """The secret-file line that lets a remote agent log in as an agent (as `name` only,
        when given), and nothing more."""
        head = AGENT_KEY_PREFIX + _KEY_VERSION + b":" + salt.hex().encode() + b":"
        if name is None:
            return head + self.agent_root(salt).hex().encode()
        return head + name.encode("ascii") + b":" + _name_key(self.agent_root(salt), name).hex().encode()


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(4, "big") + value


def transcript(username: str, dialled: str, salt: bytes, binding: bytes) -> bytes:
    """What both ends must agree on for their keys to match (see the module docstring)."""
    return b"connscale login v2" + b"".join(
        _field(v) for v in (username.encode("utf-8"), dialled.encode("utf-8"), salt, binding))


def confirmation(key: bytes, side: str) -> bytes:
    """What `side` ("hub" or "peer") sends to prove it derived the session key."""
    return hmac.new(key, b"connscale confirm " + side.encode(), hashlib.sha256).digest()


class LoginExchange:
    """One end of one SPAKE2 exchange (the peer is side A, the hub side B)."""

    def __init__(self, side: str, password: bytes, transcript_: bytes) -> None:
        from spake2 import SPAKE2_A, SPAKE2_B

        ids = {"idA": b"peer\0" + transcript_, "idB": b"hub\0" + transcript_}
        self._spake = (SPAKE2_A if side == "peer" else SPAKE2_B)(password, **ids)
        self.side = side

    def start(self) -> bytes:
        return bytes(self._spake.start())

    def finish(self, theirs: object) -> bytes:
        """The session key; CredentialError for a message that is not one."""
        if not isinstance(theirs, bytes) or len(theirs) != 33:
            raise CredentialError("a login message is 33 bytes")
        try:
            return bytes(self._spake.finish(theirs))
        except Exception:  # spake2 raises its own errors for a point off the curve, a reflection...
            raise CredentialError("a login message that is not a SPAKE2 message") from None

    @staticmethod
    def salt() -> bytes:
        return os.urandom(SALT_BYTES)
