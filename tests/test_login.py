"""The control port's login and guard, over in-memory PB with a fake clock.

Mutual authentication (the hub proves first), roles (an agent key cannot be an
operator), no replay, a login deadline, bounded bytes before login and per
message after it, and failed logins throttled and logged once per interval.
The same paths through real processes are in test_e2e_control.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.spread.pb import RemoteReference

from connscale.control import dial
from connscale.control.auth import (
    AGENT_KEY_PREFIX,
    CredentialError,
    Credentials,
    LoginExchange,
    confirmation,
    transcript,
)
from connscale.control.controller import Controller
from connscale.control.guard import LOGIN_TIMEOUT, MESSAGE_ELEMENTS, PRELOGIN_BYTES, PRELOGIN_ELEMENTS
from connscale.control.login import PROTOCOL_VERSION, HubNotAuthentic
from connscale.control.throttle import THROTTLE_FAILURES, LoginThrottle
from tests.support.control import SECRET, FakeMind, Link, make_cfg


def root_of(link: Link) -> Any:
    return link.wait(link.client_factory.getRootObject())


def server_closed(link: Link) -> bool:
    link.pump.flush()
    return bool(link.broker.disconnected)


# ---------------------------------------------------------------- keys and roles

SALT = b"s" * 16


def test_credentials_roles_and_agent_keys() -> None:
    whole = Credentials.from_secret(SECRET)
    assert whole.whole_secret
    assert whole.password("operator", SALT) != whole.password("agent:a1", SALT)
    assert whole.password("agent:a1", SALT) != whole.password("agent:a2", SALT)
    # The salt is this deployment's: another salt, other passwords.
    assert whole.password("operator", SALT) != whole.password("operator", b"t" * 16)
    line = whole.agent_line(SALT)
    assert line.startswith(AGENT_KEY_PREFIX) and SECRET not in line
    root = Credentials.from_secret(line + b"\n")
    assert root.password("agent:a1", SALT) == whole.password("agent:a1", SALT) and not root.whole_secret
    with pytest.raises(CredentialError, match="logging in as operator needs the control secret"):
        root.password("operator", SALT)
    with pytest.raises(CredentialError, match="made for another hub"):
        root.password("agent:a1", b"t" * 16)
    # A key for one name (what ssh launch hands out) logs in as that name only.
    one = Credentials.from_secret(whole.agent_line(SALT, "a1"))
    assert one.password("agent:a1", SALT) == whole.password("agent:a1", SALT)
    with pytest.raises(CredentialError, match="for agent 'a1' only, not 'a2'"):
        one.password("agent:a2", SALT)
    with pytest.raises(CredentialError, match="not hex"):
        Credentials.from_secret(AGENT_KEY_PREFIX + b"2:zz:zz")
    with pytest.raises(CredentialError, match="older connscale"):
        Credentials.from_secret(AGENT_KEY_PREFIX + b"ab" * 32)


def test_an_agent_key_logs_in_as_an_agent_and_never_as_operator(controller: Controller) -> None:
    agent_only = Credentials.from_secret(controller.agent_line())
    link = Link(controller)
    from connscale.control.login import authenticate

    perspective = link.wait(link.client_factory.getRootObject().addCallback(
        authenticate, "agent:x", agent_only, FakeMind(), "hub:1"))
    assert not isinstance(perspective, Failure), perspective
    refused = Link(controller)
    result = refused.wait(refused.client_factory.getRootObject().addCallback(
        authenticate, "operator", agent_only, None, "hub:1"))
    assert isinstance(result, Failure) and result.check(CredentialError)
    # Forging it anyway (an agent's password used as if it were the operator's): the hub's
    # confirmation does not check out, and ours is refused.
    forged = Link(controller)
    salt, exchange, key, hub_confirm = start(forged, "operator", agent_only.password("agent:x", controller.salt))
    assert hub_confirm != confirmation(key, "hub")
    answer = forged.wait(exchange.callRemote("confirm", confirmation(key, "peer"), None))
    assert isinstance(answer, Failure) and dial.is_unauthorized(answer)
    assert answer.getErrorMessage() == "wrong control secret"


def start(link: Link, username: str, password: bytes, dialled: str = "127.0.0.1:8790") -> tuple:
    """hello and start by hand: (salt, exchange, our session key, the hub's confirmation)."""
    from connscale.control.channel import binding

    root = root_of(link)
    salt, exchange = link.wait(root.callRemote("hello", PROTOCOL_VERSION, username, dialled))
    ours = LoginExchange("peer", password, transcript(username, dialled, salt, binding(link.client)))
    theirs, hub_confirm = link.wait(exchange.callRemote("start", ours.start()))
    return salt, exchange, ours.finish(theirs), hub_confirm


def test_the_right_password_by_hand_logs_in(controller: Controller) -> None:
    link = Link(controller)
    password = Credentials.from_secret(SECRET).password("operator", controller.salt)
    _, exchange, key, hub_confirm = start(link, "operator", password)
    assert hub_confirm == confirmation(key, "hub")
    assert isinstance(link.wait(exchange.callRemote("confirm", confirmation(key, "peer"), None)), RemoteReference)


@pytest.mark.parametrize("what", ["binding", "dialled", "username"])
def test_the_keys_differ_when_the_transcripts_do(what: str) -> None:
    """What a relay would need: the same session key for two different TLS channels (or
    for a hub or role other than the one dialled). SPAKE2 gives different keys."""
    password = b"p" * 32
    ours = dict(username="operator", dialled="hub:8790", salt=SALT, binding=b"b" * 32)
    theirs = dict(ours, **{what: {"binding": b"c" * 32, "dialled": "relay:8790", "username": "agent:x"}[what]})
    peer = LoginExchange("peer", password, transcript(**ours))
    hub = LoginExchange("hub", password, transcript(**theirs))
    a, b = peer.start(), hub.start()
    assert peer.finish(b) != hub.finish(a)
    same_peer = LoginExchange("peer", password, transcript(**ours))
    same_hub = LoginExchange("hub", password, transcript(**ours))
    a, b = same_peer.start(), same_hub.start()
    assert same_peer.finish(b) == same_hub.finish(a)


# ---------------------------------------------------------------- the hub proves first


def test_a_hub_without_the_secret_gets_no_confirmation_from_us(clock: Clock) -> None:
    impostor = Controller(clock, make_cfg(), b"the-impostors-secret")
    sent: list[str] = []
    from connscale.control import login

    original = login.Exchange.remote_confirm

    def spy(self: Any, given: object, mind: Any) -> Any:
        sent.append("confirm")
        return original(self, given, mind)

    login.Exchange.remote_confirm = spy  # type: ignore[method-assign]
    try:
        result = Link(impostor).login(b"agent:x", mind=FakeMind())
    finally:
        login.Exchange.remote_confirm = original  # type: ignore[method-assign]
    assert isinstance(result, Failure) and result.check(HubNotAuthentic)
    assert sent == []  # we hung up before confirming anything
    assert impostor.agents == {}


def test_a_captured_confirmation_cannot_be_replayed(controller: Controller) -> None:
    password = Credentials.from_secret(SECRET).password("operator", controller.salt)
    first = Link(controller)
    _, exchange, key, _ = start(first, "operator", password)
    captured = confirmation(key, "peer")
    assert not isinstance(first.wait(exchange.callRemote("confirm", captured, None)), Failure)
    # A new connection: a new exchange, a new key; the captured confirmation is worth nothing.
    second = Link(controller)
    _, exchange2, _, _ = start(second, "operator", b"not the password" * 2)
    refused = second.wait(exchange2.callRemote("confirm", captured, None))
    assert isinstance(refused, Failure) and dial.is_unauthorized(refused)


@pytest.mark.parametrize("args, problem", [
    ((1, "operator", "hub:1"), "control protocol 1 is not ours"),
    ((2, "operator", "hub:1"), "control protocol 2 is not ours"),  # its agents may answer only the plain report
    ((PROTOCOL_VERSION, "x" * 200, "hub:1"), "a login name is text of at most 80 characters"),
    ((PROTOCOL_VERSION, "janitor", "hub:1"), "unknown role"),
    ((PROTOCOL_VERSION, "agent:a b", "hub:1"), "an agent name is 1-64 letters"),
    ((PROTOCOL_VERSION, "operator", "hub\x1b[2J"), "the hub as dialled is text of at most 300 printable characters"),
])
def test_a_malformed_hello_is_refused_in_one_line(controller: Controller, args: tuple, problem: str) -> None:
    link = Link(controller)
    result = link.wait(root_of(link).callRemote("hello", *args))
    assert isinstance(result, Failure) and problem in result.getErrorMessage()
    assert "\n" not in result.getErrorMessage()


def test_a_malformed_start_is_refused(controller: Controller) -> None:
    link = Link(controller)
    _, exchange = link.wait(root_of(link).callRemote("hello", PROTOCOL_VERSION, "operator", "hub:1"))
    result = link.wait(exchange.callRemote("start", b"\0" * 33))
    assert isinstance(result, Failure) and "not a SPAKE2 message" in result.getErrorMessage()


def test_one_login_per_connection(controller: Controller) -> None:
    link = Link(controller)
    root = root_of(link)
    link.wait(root.callRemote("hello", PROTOCOL_VERSION, "operator", "hub:1"))
    again = link.wait(root.callRemote("hello", PROTOCOL_VERSION, "operator", "hub:1"))
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
    # Banana allows each string 640 KiB; before login the whole connection gets PRELOGIN_BYTES.
    root.callRemote("hello", PROTOCOL_VERSION, "operator", "x" * (PRELOGIN_BYTES + 1))
    assert server_closed(link)
    assert controller.throttle.refused["size"] == 1


def test_elements_before_login_are_bounded(controller: Controller) -> None:
    # Banana's decoder copies the rest of its buffer per element: many tiny elements cost far
    # more than their bytes. A list of small ints: ~3 bytes each, well under the byte bound.
    link = Link(controller)
    root = root_of(link)
    root.callRemote("hello", PROTOCOL_VERSION, "operator", list(range(PRELOGIN_ELEMENTS + 1)))
    assert server_closed(link)
    assert controller.throttle.refused["size"] == 1


def test_a_call_other_than_the_logins_before_login_drops_the_connection(controller: Controller) -> None:
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        link = Link(controller)
        root = root_of(link)
        # The gate has no such method: not an error answer (nor a traceback in the hub's log), the end.
        root.callRemote("clients").addErrback(lambda _: None)
        assert server_closed(link)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert controller.throttle.refused["protocol"] == 1
    assert not [e for e in events if e.get("log_failure") is not None or e.get("isError")]


def test_one_message_after_login_is_bounded(controller: Controller) -> None:
    link = Link(controller)
    perspective = link.login(b"operator")
    assert link.wait(perspective.callRemote("clients")) == []
    # Ten strings under Banana's per-string cap, 6 MB in one message.
    perspective.callRemote("clients", ["y" * (600 * 1024)] * 10)
    assert server_closed(link)
    assert controller.throttle.refused["size"] == 1


def test_elements_of_one_message_after_login_are_bounded(controller: Controller) -> None:
    link = Link(controller)
    perspective = link.login(b"operator")
    perspective.callRemote("clients", [0] * (MESSAGE_ELEMENTS + 1))
    assert server_closed(link)
    assert controller.throttle.refused["size"] == 1


def wrong_guess(controller: Controller) -> tuple[Link, Any]:
    link = Link(controller)
    _, exchange, key, _ = start(link, "operator", b"a wrong guess of the password")
    return link, link.wait(exchange.callRemote("confirm", confirmation(key, "peer"), None))


def test_failed_logins_are_throttled_and_logged_once_per_interval(controller: Controller, clock: Clock) -> None:
    events: list[dict] = []
    links: list[Link] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(THROTTLE_FAILURES):
            link, refused = wrong_guess(controller)
            links.append(link)
            assert isinstance(refused, Failure) and refused.getErrorMessage() == "wrong control secret"
        # The next attempt from that peer is refused at its hello, and says it is retryable.
        link = Link(controller)
        links.append(link)
        result = link.wait(root_of(link).callRemote("hello", PROTOCOL_VERSION, "operator", "hub:1"))
        assert isinstance(result, Failure) and "too many failed logins from 127.0.0.1" in result.getErrorMessage()
        assert dial.is_throttled(result) and not dial.is_unauthorized(result)
        assert dial.retry_after(result) == pytest.approx(10)
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


def test_parallel_connections_do_not_get_past_the_throttle(controller: Controller) -> None:
    # One exchange in flight per peer: a guesser opening many connections at once gets one
    # hub answer at a time, each counted when it fails, and THROTTLE_FAILURES in all.
    links = [Link(controller) for _ in range(THROTTLE_FAILURES * 3)]
    exchanges = [link.wait(root_of(link).callRemote("hello", PROTOCOL_VERSION, "operator", "hub:1"))[1] for link in links]
    starts = [ex.callRemote("start", LoginExchange("peer", b"guess", b"t").start()) for ex in exchanges]
    for link in links:
        link.pump.flush()
    answered = []
    for link, ex, d in zip(links, exchanges, starts):
        for other in links:
            other.pump.flush()
        if not d.called:
            continue
        answer = link.wait(d)
        if isinstance(answer, Failure):
            assert "too many failed logins" in answer.getErrorMessage()
            continue
        answered.append(answer)
        assert sum(s.called for s in starts) <= len(answered) + THROTTLE_FAILURES * 3  # (the rest wait)
        link.wait(ex.callRemote("confirm", b"\0" * 32, None))  # wrong: counted, the next one's turn
    assert len(answered) == THROTTLE_FAILURES


def test_a_fleet_logging_in_at_once_from_one_address_queues_and_gets_in(controller: Controller) -> None:
    from connscale.control.login import authenticate

    links = [Link(controller) for _ in range(THROTTLE_FAILURES * 4)]
    logins = [link.client_factory.getRootObject().addCallback(
        authenticate, f"agent:a{i}", Credentials.from_secret(SECRET), FakeMind(), "hub:1")
        for i, link in enumerate(links)]
    for _ in range(5):
        for link in links:
            link.pump.flush()
    assert all(d.called for d in logins)
    assert not [link.wait(d) for link, d in zip(links, logins) if isinstance(link.wait(d), Failure)]


def test_a_right_login_does_not_count_against_its_peer(controller: Controller) -> None:
    for _ in range(THROTTLE_FAILURES * 2):
        assert not isinstance(Link(controller).login(b"operator"), Failure)
    assert controller.throttle.blocked_for("127.0.0.1") == 0


def test_throttle_counts_per_peer_and_forgets_after_the_window(clock: Clock) -> None:
    throttle = LoginThrottle(clock, failures=3, window=10)
    for _ in range(3):
        throttle.acquire("10.0.0.1")
        throttle.release("10.0.0.1", failed=True)
    assert throttle.blocked_for("10.0.0.1") == pytest.approx(10)
    assert throttle.blocked_for("10.0.0.2") == 0
    # On loopback the key is the address and the local user: one user's guesses are not another's.
    for _ in range(3):
        throttle.acquire("127.0.0.1 uid 65534")
        throttle.release("127.0.0.1 uid 65534", failed=True)
    assert throttle.blocked_for("127.0.0.1 uid 0") == 0
    clock.advance(10)
    assert throttle.blocked_for("10.0.0.1") == 0


def test_throttle_queues_a_peers_logins_and_refuses_beyond_max_waiting(
        clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    from connscale.control import throttle as throttle_mod

    monkeypatch.setattr(throttle_mod, "MAX_WAITING", 2)
    throttle = LoginThrottle(clock)
    first, second, third = (throttle.acquire("10.0.0.1") for _ in range(3))
    assert first.called and not second.called and not third.called
    failed: list[Failure] = []
    throttle.acquire("10.0.0.1").addErrback(failed.append)
    assert failed and failed[0].check(throttle_mod.TooManyWaiting)
    assert throttle.acquire("10.0.0.2").called  # another peer has its own turn
    throttle.release("10.0.0.1", failed=False)
    assert second.called and not third.called


def test_a_login_beyond_the_waiting_room_is_refused_as_throttled(
        controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    from connscale.control import throttle as throttle_mod

    monkeypatch.setattr(throttle_mod, "MAX_WAITING", 0)
    controller.throttle.acquire("127.0.0.1")  # this peer's one exchange in flight
    refused = Link(controller).login(b"operator")
    assert isinstance(refused, Failure)
    assert dial.is_throttled(refused)  # as our peers read it: they retry later
    assert "too many logins at once from 127.0.0.1" in refused.getErrorMessage()
    assert controller.throttle.refused["throttled"] == 1
