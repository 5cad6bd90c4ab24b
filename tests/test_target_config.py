"""client.url, client.protocol and the profiles' keys: parsed once, every bad value one line naming its key."""

from __future__ import annotations

import pytest

from connscale.config.loader import ConfigError, parse_config
from connscale.config.target import ProfileOptions, unescape


def client(**values: object):
    return parse_config({"client": values}).client


@pytest.mark.parametrize("url,protocol,tls,host,ports,path", [
    ("redis://127.0.0.1:6379", "redis", False, "127.0.0.1", (6379,), "/"),
    ("rediss://127.0.0.1", "redis", True, "127.0.0.1", (6379,), "/"),
    ("http://localhost:8080/health", "http", False, "localhost", (8080,), "/health"),
    ("https://example.org", "http", True, "example.org", (443,), "/"),
    ("ws://host:9000/socket?x=1", "websocket", False, "host", (9000,), "/socket?x=1"),
    ("wss://[::1]/s", "websocket", True, "::1", (443,), "/s"),
    ("mqtt://127.0.0.1:1883", "mqtt", False, "127.0.0.1", (1883,), "/"),
    ("mqtts://127.0.0.1", "mqtt", True, "127.0.0.1", (8883,), "/"),
    ("tcp://127.0.0.1:8989-8992", "line", False, "127.0.0.1", (8989, 8990, 8991, 8992), "/"),
    ("raw://127.0.0.1:8989", "raw", False, "127.0.0.1", (8989,), "/"),
    ("tls://127.0.0.1:8989", "line", True, "127.0.0.1", (8989,), "/"),
])
def test_a_url_names_protocol_tls_host_ports_and_path(url, protocol, tls, host, ports, path):
    c = client(url=url)
    assert c.effective_protocol() == protocol and c.tls.enabled is tls
    assert (c.server_host, c.server_ports) == (host, ports)  # the URL is client.server from here on
    assert c.profile_options().path == path and c.profile_options().protocol == protocol


def test_a_tls_scheme_is_client_tls_with_the_urls_host_name_as_server_name():
    c = client(url="wss://example.org:9443/s", tls={"ca_file": None, "verify": False})
    assert c.tls.enabled and c.tls.server_name == "example.org" and c.tls.verify is False
    # An address is checked against the certificate's addresses: no name to send.
    assert client(url="rediss://127.0.0.1").tls.server_name is None
    # client.tls names the server itself: the URL's host is only where to dial.
    assert client(url="https://127.0.0.1:8443/", tls={"server_name": "api.test"}).tls.server_name == "api.test"
    assert client(url="http://example.org/").tls.enabled is False


def test_host_header_keeps_a_port_that_is_not_the_schemes_default():
    assert client(url="http://example.org:8080/").profile_options().host == "example.org:8080"
    assert client(url="http://example.org/").profile_options().host == "example.org"
    assert client(url="wss://[::1]:9443/").profile_options().host == "[::1]:9443"


def test_url_user_and_password_and_their_redaction():
    cfg = parse_config({"client": {"url": "mqtt://bob:s3cret@127.0.0.1"}})
    options = cfg.client.profile_options()
    assert (options.user, options.password) == ("bob", "s3cret")
    assert cfg.as_dict()["client"]["url"] == "mqtt://bob:<redacted>@127.0.0.1"
    assert cfg.as_dict(redact_secrets=False)["client"]["url"] == "mqtt://bob:s3cret@127.0.0.1"
    assert parse_config(cfg.as_dict(redact_secrets=False)) == cfg  # what the run's hub and agent load


def test_profile_sections_fill_the_options():
    c = client(protocol="http", http={"method": "HEAD", "path": "/x", "headers": {"X-A": 1}})
    assert c.profile_options() == ProfileOptions(protocol="http", method="HEAD", path="/x", headers=(("X-A", "1"),))
    c = client(url="ws://h/", websocket={"path": "/other", "subprotocol": "mqtt"})
    assert c.profile_options().path == "/other" and c.profile_options().subprotocol == "mqtt"
    assert client(protocol="custom", custom={"send": "HI {n}\\r\\n", "expect": "OK"}).profile_options().expect == "OK"
    assert unescape("HI {n}\\r\\n\\x01", 7) == b"HI 7\r\n\x01"


def test_command_line_overrides_of_nested_keys():
    cfg = parse_config({}, {"client.url": "http://127.0.0.1:1/", "client.http.method": "POST",
                            "client.tls.verify": "false", "client.tls.enabled": "yes"})
    assert cfg.client.profile_options().method == "POST"
    assert cfg.client.tls.verify is False and cfg.client.tls.enabled is True


@pytest.mark.parametrize("values,line", [
    ({"url": "gopher://x"}, "client.url: unknown scheme 'gopher'"),
    ({"url": "redis://"}, "client.url: the URL names no host"),
    ({"url": "redis://h:99999"}, "client.url: port 99999 out of range"),
    ({"url": "redis://h/db"}, "client.url: a redis:// URL takes no path"),
    ({"url": "http://u:p@h/"}, "client.url: a http:// URL takes no user:password"),
    ({"url": 5}, "client.url: expected a URL"),
    ({"protocol": "stomp"}, "client.protocol: expected one of"),
    ({"url": "redis://h", "protocol": "http"}, "client.protocol: http contradicts client.url"),
    ({"http": {"method": "get"}}, "client.http: method: expected an HTTP method in capitals"),
    ({"http": {"path": "health"}}, "client.http: path: expected a path starting with /"),
    ({"http": {"headers": {"Bad Name": "x"}}}, "client.http: headers: expected a header name"),
    ({"http": {"headers": "X: y"}}, "client.http: headers: expected a mapping"),
    ({"http": ["GET"]}, "client.http: expected a mapping"),
    ({"websocket": {"subprotocol": "a b"}}, "client.websocket: subprotocol: expected a token"),
    ({"mqtt": {"client_prefix": "x" * 30}}, "client.mqtt: client_prefix:"),
    ({"mqtt": {"user": "u"}}, "client.mqtt: user: unknown key"),
    ({"custom": {"send": "\\q"}}, "client.custom: send: unknown escape \\q"),
    ({"custom": {"expect_regex": "(a"}}, "client.custom: expect_regex: not a regular expression"),
    ({"custom": {"expect_regex": "(a)\\1"}}, "client.custom: expect_regex: backreferences are not allowed"),
    ({"tls": {"verfy": False}}, "client.tls.verfy: unknown key (did you mean 'verify'?)"),
    ({"tls": {"ca_file": "/nonexistent/ca.pem"}}, "client.tls.ca_file: no such file"),
    ({"tls": {"cert": "/etc/hostname"}}, "client.tls.cert: not a PEM certificate"),
    ({"url": "https://h/", "tls": False}, "client.tls.enabled: false contradicts client.url"),
    ({"max_reply": 10}, "client.max_reply: must be between 64"),
    ({"handshake_timeout": "0s"}, "client.handshake_timeout: must be > 0"),
])
def test_every_bad_value_is_one_line_naming_its_key(values, line):
    with pytest.raises(ConfigError) as e:
        parse_config({"client": values})
    problems = e.value.problems
    assert len(problems) == 1 and problems[0].startswith(line), problems
    assert "\n" not in problems[0]
