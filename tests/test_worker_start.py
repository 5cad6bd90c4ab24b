"""A worker starts without the modules it never uses (each costs every one of ~100 workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Never in a worker: each costs every one of ~100 workers its RSS (bench/README.md,
#: "Worker baseline RSS"), and none is used there. The hub and the CLI use the rest.
NOT_IN_A_WORKER = (
    "OpenSSL", "ssl", "_ssl", "_hashlib", "urllib.request", "email.parser", "http.client", "psutil", "hdrh",
    "hdrh.histogram", "yaml", "rich", "matplotlib", "prometheus_client", "asyncio", "decimal", "ctypes", "html",
    "html.entities", "http", "twisted.application.service", "twisted.plugin",
    "twisted.internet.endpoints", "twisted.conch", "twisted.web", "connscale.control", "connscale.app",
    "connscale.diagnose", "connscale.metrics.histograms", "connscale.metrics.status", "connscale.config.settings",
    "connscale.config.loader", "cattrs",
)

PROBE = f"""
import sys
from connscale.compat.startup import import_twisted_lean, skip_unused_modules
skip_unused_modules()
import_twisted_lean()
import connscale.procs.worker
from twisted.internet import reactor, stdio
from twisted.spread import pb
print(sorted(m for m in {NOT_IN_A_WORKER!r} if sys.modules.get(m) is not None))
"""


def test_a_worker_imports_none_of_the_modules_it_must_not() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_cookiejar_stand_in_says_why_it_is_empty() -> None:
    probe = ("from connscale.compat.startup import skip_unused_modules; skip_unused_modules();"
             "import http.cookiejar as c; c.CookieJar")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not loaded in connscale worker processes" in out.stderr


@pytest.mark.parametrize("role", ["client", "server"])
def test_a_started_worker_answers_hello_with_the_lean_imports(role: str) -> None:
    """The real entry point (python -m connscale.procs.worker) runs with them left out."""
    from tests.support.procs import free_port

    spec = {"name": "probe"} if role == "client" else {"ports": [free_port()], "name": "probe"}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    code = f"""
import json, sys
from twisted.internet import defer, reactor
from connscale.procs.childproc import PBChild, spawn_python
child = PBChild("probe", lambda c, r: None)
spawn_python(reactor, "connscale.procs.worker", [{role!r}, {json.dumps(json.dumps(spec))}], child)
result = {{}}
def done(info):
    import os
    result.update(info)
    result["nicer_by"] = os.getpriority(os.PRIO_PROCESS, info["pid"]) - os.getpriority(os.PRIO_PROCESS, 0)
    result["own_session"] = os.getsid(info["pid"]) == info["pid"]
    try:
        result["autogroup"] = open(f"/proc/{{info['pid']}}/autogroup").read().split()
    except OSError:  # a kernel without CONFIG_SCHED_AUTOGROUP
        result["autogroup"] = None
    return child.call("exit")
def bail(f):
    result["error"] = f.getErrorMessage()
child.ready.addCallback(done).addErrback(bail).addBoth(lambda _: reactor.callLater(0.5, reactor.stop))
reactor.callLater(30, reactor.stop)
reactor.run()
print(json.dumps(result))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info.get("role") == role and info.get("budget", 0) > 0, (info, out.stderr[-2000:])
    # Niced, so that a hundred busy workers leave the hub and agent their deadlines.
    from connscale.procs.worker import WORKER_NICE

    assert info["nicer_by"] == min(WORKER_NICE, 19 - os.getpriority(os.PRIO_PROCESS, 0))
    # A session of its own (our Ctrl-C is not its crash), hence its own scheduler
    # autogroup, weighted like its nice value: the nice value alone weighs nothing
    # between autogroups.
    assert info["own_session"]
    if info["autogroup"] is not None:
        assert info["autogroup"][1:] == ["nice", str(WORKER_NICE)], info["autogroup"]


#: A real worker, run as its parent runs it, with `-X importtime` on (through the
#: environment, which the worker inherits): every module it imports, at start and
#: while it answers, is one line on its stderr, which the parent hears.
RUNNING = r"""
import json, sys
from twisted.internet import defer, reactor, task
from connscale.procs.childproc import PBChild, spawn_python

imported = []
class Child(PBChild):
    def line(self, fd, text):
        if text.startswith("import time:") and "|" in text:
            imported.append(text.rsplit("|", 1)[1].strip())
child = Child("probe", lambda c, r: None)
role, spec = sys.argv[1], sys.argv[2]
spawn_python(reactor, "connscale.procs.worker", [role, spec], child)
result = {}

@defer.inlineCallbacks
def exercise(info):
    result.update(info)
    # What a parent asks of a worker, a few times, as the hub does every second.
    for _ in range(3):
        yield child.call("snapshot_packed")
        yield task.deferLater(reactor, 0.3, lambda: None)
    if role == "client":
        yield child.call("set_target_packed", json.dumps({"target": 0, "routes": [["", "127.0.0.1", 9, 1]]}))
        yield child.call("set_rate", 100.0)
        yield child.call("snapshot_packed")
    yield child.call("exit").addErrback(lambda f: None)

def bail(f):
    result["error"] = f.getErrorMessage()
child.ready.addCallback(exercise).addErrback(bail).addBoth(lambda _: reactor.callLater(0.5, reactor.stop))
reactor.callLater(30, reactor.stop)
reactor.run()
result["imported"] = imported
print(json.dumps(result))
"""


def imports_of_a_running_worker(role: str, spec: dict[str, object]) -> set[str]:
    """Every module a real worker imports while it starts and answers its parent."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPROFILEIMPORTTIME="1")
    out = subprocess.run([sys.executable, "-c", RUNNING, role, json.dumps(spec)], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in res and res.get("role") == role, (res.get("error"), out.stderr[-2000:])
    return set(res["imported"])


@pytest.mark.parametrize("role", ["client", "server"])
def test_a_running_worker_never_imports_what_it_must_not(role: str) -> None:
    from tests.support.procs import free_port

    spec = {"name": "probe"} if role == "client" else {"ports": [free_port()], "name": "probe"}
    imported = imports_of_a_running_worker(role, spec)
    # The probe sees the worker's imports (a wrong one would make this pass vacuously).
    assert {"twisted.spread.pb", "connscale.procs.childproc", "connscale.net.pool"} <= imported
    # Modules marked absent (compat.startup.ABSENT) show up as tried, and cannot load.
    from connscale.compat.startup import ABSENT

    assert sorted(imported & (set(NOT_IN_A_WORKER) - set(ABSENT))) == []


def test_an_autogroup_weight_that_cannot_be_set_is_left_alone(tmp_path) -> None:
    from connscale.procs.worker import weigh_own_autogroup

    assert not weigh_own_autogroup(10, str(tmp_path / "no" / "such" / "autogroup"))
    target = tmp_path / "autogroup"
    assert weigh_own_autogroup(10, str(target)) and target.read_text() == "10"


@pytest.mark.parametrize("role", ["client", "server"])
def test_a_worker_that_speaks_tls_takes_the_stdlibs_ssl_and_nothing_heavier(role: str, tmp_path: Path) -> None:
    """TLS workers keep ssl (net/tls.py) but never pyOpenSSL or cryptography (~13 MB each)."""
    from connscale.net.tlscert import make_auto
    from tests.support.procs import free_port

    made = make_auto(tmp_path, "127.0.0.1")
    if role == "client":
        spec: dict[str, object] = {"name": "probe", "tls": {"enabled": True, "ca_file": made.cert}}
    else:
        spec = {"ports": [free_port()], "name": "probe", "tls": {"enabled": True, "cert": made.cert, "key": made.key}}
    imported = imports_of_a_running_worker(role, spec)
    assert {"ssl", "_ssl", "connscale.net.tls"} <= imported
    # pyOpenSSL stays marked absent (tried by Twisted, never loaded); cryptography is never tried.
    from connscale.compat.startup import ABSENT, TLS_MODULES

    still_absent = set(ABSENT) - set(TLS_MODULES)
    heavy = {"cryptography", "cryptography.x509", "connscale.net.tlscert"}
    assert "OpenSSL" in still_absent
    assert sorted(imported & (heavy | (set(NOT_IN_A_WORKER) - set(ABSENT)))) == []
