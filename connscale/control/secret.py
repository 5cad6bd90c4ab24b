"""The shared control secret: where it comes from, and when a hub may make one.

Order: `control.secret`, the CONNSCALE_SECRET environment variable,
`control.secret_file`, then the per-user default file. A hub with none of
these generates one into the default file (mode 0600), which a local
`connscale ctl` and local agents find by themselves; a hub keeps reusing
that file, so agents re-register after the hub restarts. A hub never listens
beyond loopback on a secret it generated itself.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path
from typing import Mapping

from twisted.logger import Logger

from connscale.config.endpoints import binds_loopback
from connscale.config.settings import ControlSettings

log = Logger(namespace="connscale.secret")


class SecretError(Exception):
    """No usable secret; the message is one line and says what to do."""


def config_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Per-user state of connscale (the secret, the console's host key)."""
    base = env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "connscale"


def default_secret_path(env: Mapping[str, str] = os.environ) -> Path:
    return config_dir(env) / "secret"


def check_private(path: str | Path, fd: int) -> None:
    """A secret file others may read is a leaked secret: make it ours alone (0600),
    with a warning, or refuse it when it is not ours to change."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o077:
        return  # a pipe (/dev/stdin from ssh) or already private
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise SecretError(
            f"control secret file {path} is readable by others (mode {mode:04o}) and not ours to fix; "
            f"chmod 600 {path}"
        )
    os.fchmod(fd, mode & 0o700)
    log.warn("control secret file {path} was readable by others (mode {mode:04o}); made it {new:04o}",
             path=str(path), mode=mode, new=mode & 0o700)


def read_secret_file(path: str | Path) -> bytes:
    # One line only: /dev/stdin is a valid secret file for ssh-launched agents.
    try:
        with open(path, "rb") as f:
            check_private(path, f.fileno())
            value = f.readline().strip()
    except OSError as e:
        raise SecretError(f"control secret file {path}: {e.strerror or e}") from None
    if not value:
        raise SecretError(f"control secret file {path} is empty")
    return value


def configured_secret(control: ControlSettings, env: Mapping[str, str] = os.environ) -> bytes | None:
    """The configured secret (or agent-key line), refused when a guesser would find it early."""
    from connscale.control.auth import CredentialError, check_strength

    if control.secret:
        value, where = control.secret.encode(), "control.secret"
    elif env.get("CONNSCALE_SECRET"):
        value, where = env["CONNSCALE_SECRET"].encode(), "CONNSCALE_SECRET"
    elif control.secret_file:
        value, where = read_secret_file(control.secret_file), f"control secret file {control.secret_file}"
    else:
        return None
    try:
        check_strength(value.strip(), where)
    except CredentialError as e:
        raise SecretError(str(e)) from None
    return value


def secret_origin(control: ControlSettings, env: Mapping[str, str] = os.environ) -> str:
    """Where our secret comes from, in words, in the order `client_secret` looks: a wrong-secret
    error says it, so the operator knows which one to fix."""
    if control.secret:
        return "control.secret in the config"
    if env.get("CONNSCALE_SECRET"):
        return "the environment (CONNSCALE_SECRET)"
    if control.secret_file:
        return f"control.secret_file {control.secret_file}"
    return f"the default file {default_secret_path(env)}"


def hub_salt(env: Mapping[str, str] = os.environ) -> bytes:
    """This deployment's login salt: random, made once into the per-user config directory
    (public, but kept: agent keys are made for it)."""
    from connscale.control.auth import SALT_BYTES

    path = config_dir(env) / "control-salt"
    try:
        value = bytes.fromhex(path.read_text().strip())
        if len(value) == SALT_BYTES:
            return value
    except (OSError, ValueError):
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_bytes(SALT_BYTES)
    tmp = path.with_name(f".control-salt.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value.hex() + "\n")
    try:
        os.link(tmp, path)  # the first hub to make one wins; the others read it
    except FileExistsError:
        os.unlink(tmp)
        return hub_salt(env)
    os.unlink(tmp)
    return value


def hub_secret(control: ControlSettings, env: Mapping[str, str] = os.environ) -> tuple[bytes, str]:
    """The hub's secret and where it came from."""
    value = configured_secret(control, env)
    if value is not None:
        return value, "configured"
    if not binds_loopback(control.listen):
        raise SecretError(
            f"control.listen {control.listen} is not loopback-only: configure control.secret, "
            "control.secret_file or CONNSCALE_SECRET first"
        )
    path = default_secret_path(env)
    if path.exists() and path.stat().st_size:
        return read_secret_file(path), str(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if path.exists():
        path.unlink()  # empty: a crash between create and write; make a new one
    value = secrets.token_urlsafe(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value + b"\n")
    return value, str(path)


def client_secret(control: ControlSettings, env: Mapping[str, str] = os.environ) -> bytes:
    """The secret an agent or `connscale ctl` logs in with."""
    value = configured_secret(control, env)
    if value is not None:
        return value
    path = default_secret_path(env)
    if path.exists():
        return read_secret_file(path)
    raise SecretError(
        "no control secret: set CONNSCALE_SECRET, control.secret or control.secret_file "
        f"(a local hub writes one to {path})"
    )
