"""secret: where the control secret comes from, and when a hub may generate one."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from connscale.config.loader import parse_config
from connscale.config.settings import ControlSettings
from connscale.control.secret import (
    SecretError,
    client_secret,
    configured_secret,
    default_secret_path,
    hub_secret,
    read_secret_file,
)


def control(**values: object) -> ControlSettings:
    return parse_config({"control": values}).control


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose per-user config lives under tmp_path."""
    return {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def secret_file(tmp_path: Path, text: str, name: str = "secret.txt") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- precedence


def test_default_path_under_xdg_config_home(env: dict[str, str], tmp_path: Path) -> None:
    assert default_secret_path(env) == tmp_path / "xdg" / "connscale" / "secret"


def test_default_path_without_xdg_uses_home_dot_config() -> None:
    path = default_secret_path({})
    assert path == Path(os.path.expanduser("~")) / ".config" / "connscale" / "secret"


#: The sources of a secret, highest first; each case says which are present and which one wins.
PRECEDENCE = [
    pytest.param({"config", "environment", "default-file"}, "config", id="config-beats-everything"),
    pytest.param({"environment", "file"}, "environment", id="environment-beats-secret-file"),
    pytest.param({"empty-environment", "file"}, "file", id="empty-environment-variable-is-ignored"),
    pytest.param({"file", "default-file"}, "file", id="secret-file-beats-default-file"),
    pytest.param({"default-file"}, "default-file", id="default-file-last"),
]


@pytest.mark.parametrize(("present", "winner"), PRECEDENCE)
def test_the_highest_source_present_wins(present: set[str], winner: str, env: dict[str, str],
                                         tmp_path: Path) -> None:
    values: dict[str, object] = {}
    if "config" in present:
        values["secret"] = "from-the-config"
    if "environment" in present:
        env["CONNSCALE_SECRET"] = "from-the-environment"
    if "empty-environment" in present:
        env["CONNSCALE_SECRET"] = ""
    if "file" in present:
        values["secret_file"] = secret_file(tmp_path, "from-the-file\n")
    default = default_secret_path(env)
    if "default-file" in present:
        default.parent.mkdir(parents=True)
        default.write_text("from-the-default-file\n")
    c = control(**values)
    expected = f"from-the-{winner}".encode()
    # The default file is the hub's and the client's own, not a configured secret.
    assert configured_secret(c, env) == (None if winner == "default-file" else expected)
    assert client_secret(c, env) == expected
    assert hub_secret(c, env) == (expected, str(default) if winner == "default-file" else "configured")


# ---------------------------------------------------------------- files


def test_secret_file_reads_first_line_only(tmp_path: Path) -> None:
    # /dev/stdin-like: the ssh launcher writes the secret, more may follow.
    path = secret_file(tmp_path, "first-line-secret\nsecond line is not ours\n")
    assert read_secret_file(path) == b"first-line-secret"
    assert configured_secret(control(secret_file=path), {}) == b"first-line-secret"


def test_secret_file_without_newline_and_with_spaces(tmp_path: Path) -> None:
    assert read_secret_file(secret_file(tmp_path, "  padded-secret \r\n")) == b"padded-secret"
    assert read_secret_file(secret_file(tmp_path, "no-newline", "b")) == b"no-newline"


def test_secret_from_a_pipe(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.write(w, b"piped-secret\nrest of the stream")
    os.close(w)
    try:
        assert read_secret_file(f"/proc/self/fd/{r}") == b"piped-secret"
    finally:
        os.close(r)


@pytest.mark.parametrize("text", ["", "\n", "   \n", "\nsecret-on-line-two\n"])
def test_empty_secret_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = secret_file(tmp_path, text)
    with pytest.raises(SecretError) as info:
        read_secret_file(path)
    message = str(info.value)
    assert "\n" not in message and path in message and "empty" in message


# ---------------------------------------------------------------- hub generates


def test_hub_generates_private_file_and_reuses_it(env: dict[str, str]) -> None:
    c = control()
    value, source = hub_secret(c, env)
    path = default_secret_path(env)
    assert source == str(path)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0  # the directory is private too
    assert len(value) >= 32
    assert path.read_bytes() == value + b"\n"
    # The next hub (and a local ctl or agent) finds the same secret.
    assert hub_secret(c, env) == (value, str(path))
    assert client_secret(c, env) == value


def test_generated_secrets_differ(tmp_path: Path) -> None:
    a, _ = hub_secret(control(), {"XDG_CONFIG_HOME": str(tmp_path / "a")})
    b, _ = hub_secret(control(), {"XDG_CONFIG_HOME": str(tmp_path / "b")})
    assert a != b


@pytest.mark.parametrize("listen", ["tcp:8790", "tcp:8790:interface=0.0.0.0", "tcp:8790:interface=10.1.2.3"])
def test_hub_refuses_public_listen_without_configured_secret(env: dict[str, str], listen: str) -> None:
    c = control(listen=listen)
    with pytest.raises(SecretError) as info:
        hub_secret(c, env)
    message = str(info.value)
    assert "\n" not in message
    assert listen in message and "control.secret" in message and "CONNSCALE_SECRET" in message
    assert not default_secret_path(env).exists()  # nothing generated


def test_hub_refuses_public_listen_even_with_a_generated_file(env: dict[str, str]) -> None:
    hub_secret(control(), env)  # a loopback hub generated one earlier
    with pytest.raises(SecretError):
        hub_secret(control(listen="tcp:8790"), env)


def test_hub_public_listen_with_configured_secret(env: dict[str, str], tmp_path: Path) -> None:
    assert hub_secret(control(listen="tcp:8790", secret="configured-for-this-hub"), env) == \
        (b"configured-for-this-hub", "configured")
    env["CONNSCALE_SECRET"] = "from-the-environment"
    assert hub_secret(control(listen="tcp:8790"), env) == (b"from-the-environment", "configured")


@pytest.mark.parametrize("weak", ["password1", "hunter2hunter2", "qwertyuiop", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"])
def test_a_weak_secret_is_refused_by_strength_not_length(env: dict[str, str], weak: str) -> None:
    # password1 passed the old 8-character rule and was the tenth guess of a 10-word list.
    for where in ({"secret": weak}, {}):
        env.pop("CONNSCALE_SECRET", None)
        if not where:
            env["CONNSCALE_SECRET"] = weak
        with pytest.raises(SecretError) as info:
            client_secret(control(**where), env)
        message = str(info.value)
        assert "too weak" in message and "secrets.token_urlsafe(32)" in message and "\n" not in message
        assert weak not in message  # never echoed


def test_client_secret_error_when_nothing_available(env: dict[str, str]) -> None:
    with pytest.raises(SecretError) as info:
        client_secret(control(), env)
    message = str(info.value)
    assert "\n" not in message
    assert "CONNSCALE_SECRET" in message and str(default_secret_path(env)) in message
    assert not default_secret_path(env).exists()  # a client never generates one
