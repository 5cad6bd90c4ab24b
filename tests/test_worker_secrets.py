"""A client worker's target password (Redis AUTH, MQTT CONNECT) never rides its command line,
which `ps` shows every user of the host: its parent passes it in the worker's environment."""

from __future__ import annotations

import os
import signal
from typing import Any

from connscale.config.target import ProfileOptions
from connscale.procs.child import PASSWORD_VARIABLE
from connscale.procs.records import ClientSpec, ServerSpec, with_password, without_password
from connscale.procs.supervisor import Supervisor
from tests.support.loop import reactor, spin  # noqa: F401  (fixture)

PASSWORD = "pw-7f3a-not-on-argv"


def test_the_spec_on_the_command_line_has_no_password_and_the_worker_gets_it_back() -> None:
    spec = ClientSpec(profile=ProfileOptions(protocol="redis", user="app", password=PASSWORD))
    shown, env = without_password(spec)
    assert PASSWORD not in repr(shown.to_wire()) and shown.profile.user == "app"
    assert env == {PASSWORD_VARIABLE: PASSWORD}
    environ = {"PATH": "/bin", **env}
    assert with_password(ClientSpec.from_wire(shown.to_wire()), environ) == spec
    assert environ == {"PATH": "/bin"}  # taken out: nothing the worker starts inherits it
    # Nothing to hide, nothing added.
    assert without_password(ClientSpec()) == (ClientSpec(), {})
    assert without_password(ServerSpec()) == (ServerSpec(), {})


def test_a_running_client_workers_argv_never_shows_the_password(reactor: Any) -> None:  # noqa: F811
    sup = Supervisor(reactor, "client", ClientSpec(profile=ProfileOptions(protocol="redis", password=PASSWORD)), "t")
    started = sup.ensure(1)
    try:
        spin(reactor, lambda: started.called, timeout=30, what="the worker's hello")
        pid = sup.slots[0].pid
        assert pid is not None
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        assert b"connscale.procs.worker" in argv and PASSWORD.encode() not in argv
        # /proc/PID/environ is readable by the worker's own user only (and root).
        assert f"{PASSWORD_VARIABLE}={PASSWORD}".encode() in environ
    finally:
        # This reactor does not run, so it reaps no child: end ours by its pid, and reap it.
        pid = sup.slots[0].pid if sup.slots else None
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
