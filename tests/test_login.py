"""The control port's login and guard, over in-memory PB with a fake clock.

Mutual authentication (the hub proves first), roles (an agent key cannot be an
operator), no replay, a login deadline, bounded bytes before login and per
message after it, and failed logins throttled and logged once per interval.
The same paths through real processes are in test_e2e_control.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from connscale.control import dial
from connscale.control.auth import AGENT_KEY_PREFIX, CredentialError, Credentials, proof
from connscale.control.controller import Controller
from connscale.control.login import (
    LOGIN_TIMEOUT,
    PRELOGIN_BYTES,
    THROTTLE_FAILURES,
    HubNotAuthentic,
    LoginThrottle,
)
from tests.test_control import SECRET, FakeMind, Link, make_cfg


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def controller(clock: Clock) -> Controller:
    return Controller(clock, make_cfg(), SECRET)


def root_of(link: Link) -> Any:
    return link.wait(link.client_factory.getRootObject())


def server_closed(link: Link) -> bool:
    link.pump.flush()
    return bool(link.broker.disconnected)


# ---------------------------------------------------------------- keys and roles


def test_credentials_roles_and_agent_key() -> None:
    whole = Credentials.from_secret(SECRET)
    assert whole.whole_secret and whole.key("agent") != whole.key("operator")
    line = whole.agent_line()
    assert line.startswith(AGENT_KEY_PREFIX) and SECRET not in line
    agent_only = Credentials.from_secret(line + b"\n")
    assert agent_only.key("agent") == whole.key("agent") and not agent_only.whole_secret
    with pytest.raises(CredentialError, match="logging in as operator needs the control secret"):
        agent_only.key("operator")
    with pytest.raises(CredentialError, match="not hex"):
        Credentials.from_secret(AGENT_KEY_PREFIX + b"zz")


def test_an_agent_key_logs_in_as_an_agent_and_never_as_operator(controller: Controller) -> None:
    agent_only = Credentials.from_secret(Credentials.from_secret(SECRET).agent_line())
    link = Link(controller)
    from connscale.control.login import authenticate

    perspective = link.wait(link.client_factory.getRootObject().addCallback(
        authenticate, "agent:x", agent_only, FakeMind()))
    assert not isinstance(perspective, Failure), perspective
    refused = Link(controller)
    result = refused.wait(refused.client_factory.getRootObject().addCallback(
        authenticate, "operator", agent_only, None))
    assert isinstance(result, Failure) and result.check(CredentialError)
    # Forging it anyway (the agent key used as if it were the operator's): the hub's
    # proof does not check out, and a proof made with it is refused by the hub.
    forged = Link(controller)
    root = root_of(forged)
    nonce = os.urandom(32)
    hub_nonce, hub_proof, challenge = forged.wait(root.callRemote("hello", 1, "operator", nonce))
    key = agent_only.key("agent")
    assert hub_proof != proof(key, "hub", "operator", nonce, hub_nonce)
    answer = forged.wait(challenge.callRemote("respond", proof(key, "peer", "operator", nonce, hub_nonce), None))
    assert isinstance(answer, Failure) and dial.is_unauthorized(answer)
    assert answer.getErrorMessage() == "wrong control secret"


# ---------------------------------------------------------------- the hub proves first


def test_a_hub_without_the_secret_gets_no_proof_from_us(clock: Clock) -> None:
    impostor = Controller(clock, make_cfg(), b"the-impostors-secret")
    sent: list[str] = []
    from connscale.control import login

    original = login.Challenge.remote_respond

    def spy(self: Any, given: object, mind: Any) -> Any:
        sent.append("respond")
        return original(self, given, mind)

    login.Challenge.remote_respond = spy  # type: ignore[method-assign]
    try:
        result = Link(impostor).login(b"agent:x", mind=FakeMind())
    finally:
        login.Challenge.remote_respond = original  # type: ignore[method-assign]
    assert isinstance(result, Failure) and result.check(HubNotAuthentic)
    assert sent == []  # we hung up before proving anything: nothing to crack offline
    assert impostor.agents == {}


def test_a_captured_proof_cannot_be_replayed(controller: Controller) -> None:
    key = Credentials.from_secret(SECRET).key("operator")
    first = Link(controller)
    nonce = os.urandom(32)
    hub_nonce, _, challenge = first.wait(root_of(first).callRemote("hello", 1, "operator", nonce))
    captured = proof(key, "peer", "operator", nonce, hub_nonce)
    assert not isinstance(first.wait(challenge.callRemote("respond", captured, None)), Failure)
    # Same peer nonce, same captured proof, a new connection: the hub's nonce is new.
    second = Link(controller)
    _, _, challenge2 = second.wait(root_of(second).callRemote("hello", 1, "operator", nonce))
    refused = second.wait(challenge2.callRemote("respond", captured, None))
    assert isinstance(refused, Failure) and dial.is_unauthorized(refused)


@pytest.mark.parametrize("args, problem", [
    ((2, "operator", b"n" * 32), "control protocol 2 is not ours"),
    ((1, "operator", b"short"), "a login nonce is 32 bytes"),
    ((1, "x" * 200, b"n" * 32), "a login name is text of at most 80 characters"),
    ((1, "janitor", b"n" * 32), "unknown role"),
])
def test_a_malformed_hello_is_refused_in_one_line(controller: Controller, args: tuple, problem: str) -> None:
    link = Link(controller)
    result = link.wait(root_of(link).callRemote("hello", *args))
    assert isinstance(result, Failure) and problem in result.getErrorMessage()
    assert "\n" not in result.getErrorMessage()


def test_one_login_per_connection(controller: Controller) -> None:
    link = Link(controller)
    root = root_of(link)
    link.wait(root.callRemote("hello", 1, "operator", os.urandom(32)))
    again = link.wait(root.callRemote("hello", 1, "operator", os.urandom(32)))
    assert isinstance(again, Failure) and "one login per connection" in again.getErrorMessage()


# ---------------------------------------------------------------- the guard


def test_a_connection_that_does_not_log_in_is_dropped(controller: Controller, clock: Clock) -> None:
    link = Link(controller)
    root_of(link)
    clock.advance(LOGIN_TIMEOUT - 0.1)
    assert not server_closed(link)
    clock.advance(0.2)
    assert server_closed(link)
    assert controller.throttle.refused["timeout"] == 1


def test_a_logged_in_connection_outlives_the_deadline(controller: Controller, clock: Clock) -> None:
    link = Link(controller)
    link.login(b"operator")
    clock.advance(LOGIN_TIMEOUT * 10)
    assert not server_closed(link)


def test_bytes_before_login_are_bounded(controller: Controller) -> None:
    link = Link(controller)
    root = root_of(link)
    # Banana allows each string 640 KiB; before login the whole connection gets 16 KiB.
    root.callRemote("hello", 1, "operator", b"x" * (PRELOGIN_BYTES + 1))
    assert server_closed(link)
    assert controller.throttle.refused["size"] == 1


def test_one_message_after_login_is_bounded(controller: Controller) -> None:
    link = Link(controller)
    perspective = link.login(b"operator")
    assert link.wait(perspective.callRemote("clients")) == []
    # Ten strings under Banana's per-string cap, 6 MB in one message.
    perspective.callRemote("clients", ["y" * (600 * 1024)] * 10)
    assert server_closed(link)
    assert controller.throttle.refused["size"] == 1


def test_failed_logins_are_throttled_and_logged_once_per_interval(controller: Controller, clock: Clock) -> None:
    events: list[dict] = []
    links: list[Link] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(THROTTLE_FAILURES):
            link = Link(controller)
            links.append(link)
            root = root_of(link)
            _, _, challenge = link.wait(root.callRemote("hello", 1, "operator", os.urandom(32)))
            refused = link.wait(challenge.callRemote("respond", b"\0" * 32, None))
            assert isinstance(refused, Failure) and refused.getErrorMessage() == "wrong control secret"
        # The next attempt from that address is refused before any key is used.
        link = Link(controller)
        links.append(link)
        result = link.wait(root_of(link).callRemote("hello", 1, "operator", os.urandom(32)))
        assert isinstance(result, Failure) and "too many failed logins" in result.getErrorMessage()
        clock.advance(0)
        assert all(server_closed(each) for each in links)  # each refused connection is closed
        clock.advance(60)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if "refused {total} connection(s)" in e.get("log_format", "")]
    # Six refusals: one line at the first, one for the rest when the interval ended.
    assert len(lines) == 2 and sum(e["total"] for e in lines) == THROTTLE_FAILURES + 1
    # Once the window has passed, the right secret logs in again.
    assert not isinstance(Link(controller).login(b"operator"), Failure)


def test_throttle_counts_per_address_and_forgets_after_the_window(clock: Clock) -> None:
    throttle = LoginThrottle(clock, failures=3, window=10)
    for _ in range(3):
        throttle.failed("10.0.0.1", "wrong control secret")
    assert throttle.blocked_for("10.0.0.1") == pytest.approx(10)
    assert throttle.blocked_for("10.0.0.2") == 0
    clock.advance(10)
    assert throttle.blocked_for("10.0.0.1") == 0
