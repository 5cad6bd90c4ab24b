"""`client.tls` and `server.tls` in the configuration: each problem one line naming its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from connscale.config.loader import ConfigError, parse_config
from connscale.config.tls import ClientTLSSettings, ServerTLSSettings
from connscale.net.tlscert import certificate, make_auto, new_key, write_pem
from tests.support.certs import Pki


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def test_tls_is_off_unless_asked() -> None:
    c = parse_config({})
    assert c.client.tls == ClientTLSSettings() and not c.client.tls.enabled
    assert c.server.tls == ServerTLSSettings() and not c.server.tls.enabled


def test_true_or_a_mapping_turns_client_tls_on(pki: Pki) -> None:
    assert parse_config({"client": {"tls": True}}).client.tls == ClientTLSSettings(enabled=True)
    cert, key = pki.issue("client", names=())
    tls = parse_config({"client": {"tls": {
        "server_name": "ping.example", "ca_file": pki.ca_file, "cert": cert, "key": key,
        "resume": False, "handshake_timeout": "500ms"}}}).client.tls
    assert tls == ClientTLSSettings(enabled=True, server_name="ping.example", ca_file=pki.ca_file,
                                    cert=cert, key=key, resume=False, handshake_timeout=0.5)
    assert not parse_config({"client": {"tls": {"enabled": False, "verify": False}}}).client.tls.enabled


def test_server_tls_auto_or_a_certificate(pki: Pki) -> None:
    assert parse_config({"server": {"tls": "auto"}}).server.tls == ServerTLSSettings(enabled=True, auto=True)
    cert, key = pki.issue("server")
    assert parse_config({"server": {"tls": {"cert": cert, "key": key}}}).server.tls == ServerTLSSettings(
        enabled=True, cert=cert, key=key)
    for off in (None, False, "off"):
        assert not parse_config({"server": {"tls": off}}).server.tls.enabled


@pytest.mark.parametrize("tls", [
    {"client": {"tls": True}, "server": {"tls": "auto"}},
    {"client": {"tls": {"verify": False, "resume": False}}},
])
def test_tls_settings_round_trip_through_as_dict(tls: dict) -> None:
    c = parse_config(tls)
    assert parse_config(c.as_dict()) == c


def test_a_certificate_made_for_a_run_round_trips_as_such(tmp_path: Path) -> None:
    made = make_auto(tmp_path / "tls", "127.0.0.1")
    c = parse_config({"server": {"tls": "auto"}})
    import attrs

    c = attrs.evolve(c, server=attrs.evolve(c.server, tls=made))
    assert c.as_dict()["server"]["tls"] == {"cert": made.cert, "key": made.key, "auto": True}
    assert parse_config(c.as_dict()).server.tls == made
    assert (tmp_path / "tls").stat().st_mode & 0o777 == 0o700
    assert Path(made.key).stat().st_mode & 0o777 == 0o600  # type: ignore[arg-type]


def test_a_missing_file_names_its_key(tmp_path: Path) -> None:
    assert problems({"client": {"tls": {"ca_file": str(tmp_path / "nope.pem")}}}) == [
        f"client.tls.ca_file: no such file: {tmp_path / 'nope.pem'}"]
    assert problems({"server": {"tls": {"cert": str(tmp_path / "gone.crt")}}}) == [
        f"server.tls.cert: no such file: {tmp_path / 'gone.crt'}"]


def test_a_file_that_is_not_a_certificate(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    (line,) = problems({"client": {"tls": {"ca_file": str(junk)}}})
    assert line.startswith(f"client.tls.ca_file: not a PEM certificate file: {junk}")


def test_a_key_that_does_not_match_its_certificate(pki: Pki) -> None:
    cert, _ = pki.issue("one")
    _, other_key = pki.issue("two")
    assert problems({"client": {"tls": {"cert": cert, "key": other_key}}}) == [
        f"client.tls.key: does not match the certificate {cert}"]
    assert problems({"server": {"tls": {"cert": cert, "key": other_key}}}) == [
        f"server.tls.key: does not match the certificate {cert}"]


def test_a_certificate_without_its_key(pki: Pki) -> None:
    cert, _ = pki.issue("lonely")
    (line,) = problems({"server": {"tls": {"cert": cert}}})
    assert line.startswith(f"server.tls.key: required: {cert} holds no private key")
    _, key = pki.issue("keyonly")
    assert problems({"client": {"tls": {"key": key}}}) == ["client.tls.key: given without client.tls.cert"]


def test_an_expired_server_certificate_is_refused_before_the_run(pki: Pki) -> None:
    cert, key = pki.issue("old", days=(-30, -2))
    (line,) = problems({"server": {"tls": {"cert": cert, "key": key}}})
    assert line.startswith("server.tls.cert: expired on ") and line.endswith(cert)


def test_verify_without_a_ca_for_a_self_signed_server_is_named(tmp_path: Path) -> None:
    key = new_key()
    cert, key_path = write_pem(tmp_path, "self", certificate(key, ("127.0.0.1",)), key)
    server = {"tls": {"cert": cert, "key": key_path}}
    assert problems({"server": server, "client": {"tls": True}}) == [
        f"client.tls.ca_file: required with client.tls.verify on: server.tls.cert {cert} is self-signed, so no "
        f"system CA vouches for it (trust it with client.tls.ca_file: {cert}, or set client.tls.verify: false)"]
    # Either fix is accepted; so is auto, whose certificate the run's clients are given.
    parse_config({"server": server, "client": {"tls": {"ca_file": cert}}})
    parse_config({"server": server, "client": {"tls": {"verify": False}}})
    parse_config({"server": {"tls": "auto"}, "client": {"tls": True}})


def test_every_problem_at_once_each_on_its_line(tmp_path: Path) -> None:
    assert problems({"client": {"tls": {"ca_fil": "x", "verify": "maybe", "handshake_timeout": -1}},
                     "server": {"tls": True}}) == [
        "server.tls: expected auto or a mapping {cert: FILE, key: FILE}, got true",
        "client.tls.ca_fil: unknown key (did you mean 'ca_file'?)",
        "client.tls.verify: expected true or false, got 'maybe'",
        "client.tls.handshake_timeout: must be between 0.001 and 3600, got -1",
    ]
    assert problems({"client": {"tls": ["on"]}}) == [
        "client.tls: expected true, false or a mapping of TLS keys, got a list"]
    assert problems({"server": {"tls": {"key": "x"}}})[0].startswith("server.tls.key: no such file")


def test_a_bad_tls_config_stops_a_command_with_one_line_each(tmp_path: Path, pki: Pki) -> None:
    cert, _ = pki.issue("one")
    _, other_key = pki.issue("two")
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"client": {"tls": {"cert": cert, "key": other_key, "verfy": True}}}))
    done = subprocess.run([sys.executable, "-m", "connscale", "check", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[1:] == [
        "client.tls.verfy: unknown key (did you mean 'verify'?)",
    ]
