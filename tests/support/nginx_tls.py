"""nginx terminating TLS in front of a plain connscale server (its `stream` module).

Started with a config of the test's own on a loopback port, with the test's certificate,
in its own session, and stopped by its pid. It is a real, independently written TLS server
(its own OpenSSL settings, session tickets, certificate chain) between connscale's TLS
client and a ping server, so whatever the client says reaches a server that answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.procs import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def missing() -> str | None:
    """Why nginx's TLS proxy cannot run here, or None."""
    if not os.path.exists(NGINX):
        return "nginx is not installed (apt-get install nginx-light libnginx-mod-stream)"
    if not os.path.exists(STREAM_MODULE):
        return "nginx's stream module is not installed (apt-get install libnginx-mod-stream)"
    return None


@contextlib.contextmanager
def tls_proxy(workdir: Path, cert: str, key: str, backend: int) -> Iterator[int]:
    """nginx on a free loopback port: TLS with `cert`, plain TCP on to 127.0.0.1:`backend`."""
    port = free_port()
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
load_module {STREAM_MODULE};
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
stream {{
    server {{
        listen 127.0.0.1:{port} ssl backlog=1024;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        proxy_pass 127.0.0.1:{backend};
    }}
}}
""")
    log = prefix / "nginx.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx did not listen on {port}: {(prefix / 'error.log').read_text()[-2000:]}")
            time.sleep(0.05)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # nginx's master stops its workers, then itself
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
                proc.wait(5)
