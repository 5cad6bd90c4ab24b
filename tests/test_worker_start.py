"""A worker starts without the modules it never uses (each costs every one of ~100 workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from connscale.compat.startup import skip_unused_modules
skip_unused_modules()
import connscale.procs.worker
from twisted.internet import reactor, stdio
from twisted.spread import pb
heavy = ("OpenSSL", "ssl", "_hashlib", "urllib.request", "email.parser", "psutil", "hdrh", "hdrh.histogram", "yaml")
print(sorted(m for m in heavy if sys.modules.get(m) is not None))
"""


def test_a_worker_imports_no_tls_http_psutil_or_hdrh() -> None:
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
