"""Unit tests of the hub's own logic (the service's tick and stop order, ssh launch that
hands out only the agent key) and of `connscale ctl` (one verb list, rendering, exit
codes), with fakes; the real processes are in the test_e2e_* modules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from connscale.app import cli
from connscale.app.startup import EXIT_OK, EXIT_REFUSED, EXIT_USAGE
from connscale.config.loader import parse_config
from connscale.control import hub as hub_mod
from connscale.control import ssh_start
from connscale.control.auth import AGENT_KEY_PREFIX, CredentialError, Credentials
from connscale.control.controller import Controller
from connscale.control.errors import ControlError
from tests.support.control import SECRET, FakeMind, Link, agent_info

# ---------------------------------------------------------------- hub


class FakeServers:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.stopping = False

    def ensure(self, n: int) -> defer.Deferred[list[int]]:
        self.calls.append(f"ensure {n}")
        return defer.succeed([19900] * n)

    def stop(self) -> defer.Deferred[None]:
        self.calls.append(f"stop (stopping={self.stopping})")
        return defer.succeed(None)


class FakeController:
    def __init__(self) -> None:
        self.ticks = 0
        self.timeline = None

    def tick(self) -> defer.Deferred[None]:
        self.ticks += 1
        return defer.succeed(None)


def test_hub_service_ticks_every_second_and_stops_in_order() -> None:
    clock, servers, controller = Clock(), FakeServers(), FakeController()
    service = hub_mod.HubService(clock, controller, servers, 3)  # type: ignore[arg-type]
    service.startService()
    assert servers.calls == ["ensure 3"]
    clock.advance(1.0)
    clock.advance(1.0)
    assert controller.ticks == 2
    done = service.stopService()
    # The last second is recorded, then the workers stop, knowing they are being stopped.
    assert done.called and controller.ticks == 3
    assert servers.calls == ["ensure 3", "stop (stopping=True)"]
    clock.advance(5)
    assert controller.ticks == 3


def test_ssh_launch_hands_the_agent_only_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from connscale.control import launch

    sent: list[bytes] = []

    class Launched:
        stderr_tail: list[str] = []

        def __init__(self) -> None:
            self.ended: defer.Deferred[int] = defer.Deferred()
            self.stopped = False

        def stop(self) -> defer.Deferred[None]:
            self.stopped = True
            return defer.succeed(None)

    launched = Launched()

    def fake_launch(reactor: Any, host: Any, argv: Any, stdin_data: bytes, on_line: Any) -> Launched:
        sent.append(stdin_data)
        return launched

    monkeypatch.setattr(launch, "launch", fake_launch)
    clock = Clock()
    cfg = parse_config({"control": {"secret": SECRET.decode()},
                        "clients": {"c2": {"host": "198.18.0.2", "master": "198.18.0.1:8790"}}})
    controller = Controller(clock, cfg, SECRET, launcher=ssh_start.launch_client)
    d = controller.client_start("c2")
    (line,) = sent
    assert line.startswith(AGENT_KEY_PREFIX) and SECRET not in line
    # Its own name's key: it logs in as c2 and as no other agent, nor as operator.
    held = Credentials.from_secret(line)
    assert held.password("agent:c2", controller.salt) == controller.credentials.password("agent:c2", controller.salt)
    with pytest.raises(CredentialError):
        held.password("agent:c3", controller.salt)
    assert not d.called
    # The launched agent registers: client_start answers with its name.
    link = Link(controller)
    perspective = link.login(b"agent:c2", mind=FakeMind())
    link.wait(perspective.callRemote("register", agent_info()))
    assert d.called and d.result == "c2"
    assert controller.agents["c2"].launch is launched


def test_ssh_launch_that_never_registers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from connscale.control import launch

    class Launched:
        stderr_tail: list[str] = []
        stopped = False

        def __init__(self) -> None:
            self.ended: defer.Deferred[int] = defer.Deferred()

        def stop(self) -> None:
            self.stopped = True

    launched = Launched()
    monkeypatch.setattr(launch, "launch", lambda *a: launched)
    clock = Clock()
    cfg = parse_config({"control": {"secret": SECRET.decode()}, "clients": {"c2": {"host": "198.18.0.2"}}})
    d = Controller(clock, cfg, SECRET, launcher=ssh_start.launch_client).client_start("c2")
    clock.advance(ssh_start.REGISTER_TIMEOUT)
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(ControlError) and launched.stopped
    assert "did not register within 60s" in failures[0].getErrorMessage()


def test_control_address() -> None:
    cfg = parse_config({"control": {"listen": "tcp:9000:interface=10.1.2.3"}})
    assert ssh_start.control_address(cfg) == ("10.1.2.3", 9000)
    cfg = parse_config({"control": {"listen": "tcp:9000"}})
    assert ssh_start.control_address(cfg) == ("127.0.0.1", 9000)


def test_hub_start_refuses_a_port_in_use_in_one_line() -> None:
    import socket

    from connscale.control.errors import StartError
    from tests.support.procs import free_port

    port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        cfg = parse_config({"server": {"interface": "127.0.0.1", "ports": [port]}})
        with pytest.raises(StartError) as e:
            hub_mod.check_ports(cfg.server, own_server=True)
        assert str(e.value).count("\n") == 0 and str(port) in str(e.value)
        hub_mod.check_ports(cfg.server, own_server=False)  # client.url: no server of ours binds


def test_hub_start_refuses_an_agent_key_as_its_secret() -> None:
    from connscale.control.errors import StartError

    line = Credentials.from_secret(SECRET).agent_line(b"s" * 16).decode()
    with pytest.raises(StartError, match="is an agent key: a hub needs the secret itself"):
        hub_mod.hub_credentials(parse_config({"control": {"secret": line}}).control)
    credentials, source = hub_mod.hub_credentials(parse_config({"control": {"secret": SECRET.decode()}}).control)
    assert credentials.whole_secret and source == "configured"


# ---------------------------------------------------------------- ctl


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    made: list[Any] = []
    answers: dict[str, Any] = {
        "clients": (EXIT_OK, [{"name": "a1", "connected": True, "host": "h", "workers": 2, "target": 100,
                               "open": 99}]),
        "connections_start": (EXIT_OK, 150),
        "count_connections": (EXIT_OK, 42),
        "set_rate": (EXIT_OK, None),
        "client_stop": (EXIT_REFUSED, "no client named 'zz'"),
        "agent_key": (EXIT_OK, "connscale-agent-key:2:..."),
    }

    def fake(host: str, port: int, secret: bytes, method: str, *args: Any, tls_ca: Any = None) -> Any:
        made.append((host, port, secret, method, args))
        return answers[method]

    monkeypatch.setattr(cli, "operator_call", fake)
    monkeypatch.setenv("CONNSCALE_SECRET", "s3cret-s3cret-of-these-tests")
    return made


def test_ctl_subcommands_render_their_answers(calls: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.ctl(["--master", "10.0.0.1:9000", "start", "50", "--client", "a1"]) == EXIT_OK
    assert capsys.readouterr().out == "target 150\n"
    assert calls[-1] == ("10.0.0.1", 9000, b"s3cret-s3cret-of-these-tests", "connections_start", (50, "a1"))
    assert cli.ctl(["count"]) == EXIT_OK and capsys.readouterr().out == "42\n"
    assert calls[-1][:2] == ("127.0.0.1", 8790) and calls[-1][3:] == ("count_connections", (None,))
    assert cli.ctl(["clients"]) == EXIT_OK
    assert capsys.readouterr().out.splitlines()[1].split() == ["a1", "True", "h", "2", "100", "99"]
    assert cli.ctl(["rate", "250.5"]) == EXIT_OK and calls[-1][3:] == ("set_rate", (250.5, None))
    assert capsys.readouterr().out == "rate set\n"


def test_ctl_refusal_is_one_line_exit_1(calls: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.ctl(["client-stop", "zz"]) == EXIT_REFUSED
    assert capsys.readouterr().err == "connscale ctl: no client named 'zz'\n"


def test_ctl_bad_usage_exits_2(calls: list[Any], capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["start", "many"], ["--master", "nohost", "count"], ["frobnicate"]):
        with pytest.raises(SystemExit) as e:
            cli.ctl(argv)
        assert e.value.code == EXIT_USAGE, argv
    assert calls == []


def test_ctl_without_a_secret_exits_2(monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CONNSCALE_SECRET", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.ctl(["count"]) == EXIT_USAGE
    assert capsys.readouterr().err.startswith("connscale ctl: no control secret")


def test_agent_key_command(calls: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                           capsys: pytest.CaptureFixture[str]) -> None:
    # It asks the hub (which holds the deployment's salt), as an operator.
    assert cli.main(["agent-key", "--name", "a1"]) == EXIT_OK
    assert calls[-1][3:] == ("agent_key", ("a1",))
    monkeypatch.delenv("CONNSCALE_SECRET")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["agent-key"]) == EXIT_USAGE


def test_stats_json(calls: list[Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "operator_call", lambda *a, **k: (EXIT_OK, {"ghosts": 0}))
    assert cli.ctl(["stats", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"ghosts": 0}
