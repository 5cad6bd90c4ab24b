"""Real servers for the profile tests: redis-server, nginx, mosquitto and a WebSocket echo server;
and nginx terminating TLS in front of a plain ping server, for the TLS client's tests.

Each is started on a loopback port of `free_port()`, with a config file of the test's own in
the test's directory and an open-file limit it was given (so its own cap, not the box's, is
what a test provokes), waited for until it accepts, and stopped by its pid. Shared by the
e2e tests (tests/test_e2e_servers.py) and the full-size figures (bench/servers.py).

The WebSocket server is autobahn's (`WebSocketServerFactory`, the library the brief brings
with txaio), run as `python -m tests.support.ws_echo`: it has a connection cap of its own
(`maxConnections`), answered with a 503 at the upgrade, which is what a WebSocket gateway
at its limit does, and it answers ping frames with pong frames as RFC 6455 asks.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from tests.support.procs import free_port

REPO = Path(__file__).resolve().parents[2]


def missing(*programs: str) -> str | None:
    """Why a test cannot run here (a program not installed), or None."""
    absent = [p for p in programs if shutil.which(p) is None and not os.path.exists(f"/usr/sbin/{p}")]
    return f"not installed: {', '.join(absent)} (apt-get install redis-server nginx-light mosquitto)" if absent else None


def redis_tls_missing() -> str | None:
    """Why redis-server cannot serve TLS here (not installed, or built without TLS), or None."""
    absent = missing("redis-server")
    if absent is not None:
        return absent
    # Redis speaks TLS only when built with it (BUILD_TLS=yes links OpenSSL; =module ships
    # redis-tls.so); its config takes tls-port either way, and fails only once listening.
    program = os.path.realpath(_program("redis-server"))
    linked = subprocess.run(["ldd", program], capture_output=True, text=True, timeout=20).stdout
    if "libssl" not in linked and not list(Path("/usr/lib").glob("**/redis-tls.so")):
        return "this redis-server was built without TLS (no libssl linked, no redis-tls.so)"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@attrs.frozen
class Running:
    """A server under test: where it listens, and its pid (for `connscale run --observe PID`)."""

    port: int
    pid: int


def _nofile(limit: int):  # type: ignore[no-untyped-def]
    def set_limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        soft = limit if hard == resource.RLIM_INFINITY else min(limit, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, max(soft, hard) if hard != resource.RLIM_INFINITY else hard))
        os.setsid()
    return set_limit


def _wait_accepting(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"the server did not listen on {port} within {timeout:g}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def _running(argv: list[str], port: int, workdir: Path, name: str, nofile: int) -> Iterator[Running]:
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=workdir, preexec_fn=_nofile(nofile))
    try:
        _wait_accepting(port, proc, log)
        yield Running(port, proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                # Its own session (_nofile): this kills what it started (nginx's workers) too, and only that.
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@contextlib.contextmanager
def redis(workdir: Path, maxclients: int | None = None, nofile: int = 65536, password: str | None = None,
          tls: tuple[str, str] | None = None, program: Path | None = None,
          conf: Sequence[str] = ()) -> Iterator[Running]:
    """redis-server; `maxclients` None keeps Redis's default (10,000, lowered to its fd limit - 32).
    With `password` it requires AUTH; with `tls` (certificate, key) it speaks TLS only. `program`:
    redis-server under another path (a symlink of a unique name, so an observer finds it by name);
    `conf`: more lines of redis.conf."""
    port = free_port()
    path = workdir / "redis.conf"
    # protected-mode no: it is bound to 127.0.0.1 anyway, and clients spread over source IPs
    # 127.0.0.2-... (one route holds 14,000) are "not loopback" to Redis's protected mode.
    lines = [f"port {0 if tls else port}", "bind 127.0.0.1", 'save ""', "appendonly no", "daemonize no",
             f"dir {workdir}", "tcp-backlog 4096", "protected-mode no"]
    if maxclients is not None:
        lines.append(f"maxclients {maxclients}")
    if password is not None:
        lines.append(f"requirepass {password}")
    if tls is not None:
        lines += [f"tls-port {port}", f"tls-cert-file {tls[0]}", f"tls-key-file {tls[1]}", "tls-auth-clients no"]
    lines += conf
    path.write_text("\n".join(lines) + "\n")
    argv = [str(program) if program is not None else _program("redis-server"), str(path)]
    with _running(argv, port, workdir, "redis", nofile) as running:
        yield running


@contextlib.contextmanager
def nginx(workdir: Path, worker_connections: int, nofile: int = 65536, workers: int = 1,
          tls: tuple[str, str] | None = None) -> Iterator[Running]:
    """nginx with `workers` worker processes (each holds worker_connections), keep-alive long
    enough for a run, `location /` answering 200; with `tls` (certificate, key) HTTPS only."""
    port = free_port()
    ssl = (f" ssl;\n        ssl_certificate {tls[0]};\n        ssl_certificate_key {tls[1]};\n"
           "        ssl_protocols TLSv1.2 TLSv1.3") if tls else ""
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {nofile};
events {{ worker_connections {worker_connections}; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_timeout 600s;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} backlog=4096{ssl};
        location / {{ return 200 "ok\\n"; }}
    }}
}}
""")
    with _running([_program("nginx"), "-p", str(prefix), "-c", str(conf)], port, workdir, "nginx", nofile) as running:
        yield running


#: nginx's `stream` module (Debian's libnginx-mod-stream), which nginx_tls_proxy() loads.
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def nginx_tls_missing() -> str | None:
    """Why nginx_tls_proxy() cannot run here, or None."""
    if missing("nginx") is not None:
        return "nginx is not installed (apt-get install nginx-light libnginx-mod-stream)"
    if not os.path.exists(NGINX_STREAM_MODULE):
        return "nginx's stream module is not installed (apt-get install libnginx-mod-stream)"
    return None


@contextlib.contextmanager
def nginx_tls_proxy(workdir: Path, cert: str, key: str, backend: int) -> Iterator[Running]:
    """nginx's stream proxy: TLS with `cert` on a free loopback port, plain TCP on to
    127.0.0.1:`backend`. A real, independently written TLS server (its own OpenSSL settings,
    session tickets, certificate chain) between connscale's TLS client and a ping server, so
    whatever the client says reaches a server that answers."""
    port = free_port()
    prefix = workdir / "nginx"
    prefix.mkdir(exist_ok=True)
    conf = prefix / "nginx.conf"
    # Its errors to stderr: the log a start that fails shows.
    conf.write_text(f"""
load_module {NGINX_STREAM_MODULE};
worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log stderr warn;
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
    argv = [_program("nginx"), "-p", str(prefix), "-c", str(conf)]
    with _running(argv, port, workdir, "nginx-tls", 65536) as running:
        yield running


@contextlib.contextmanager
def mosquitto(workdir: Path, max_connections: int = -1, nofile: int = 65536) -> Iterator[Running]:
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"""
listener {port} 127.0.0.1
max_connections {max_connections}
allow_anonymous true
persistence false
log_dest stderr
log_type error
log_type warning
""")
    with _running([_program("mosquitto"), "-c", str(conf)], port, workdir, "mosquitto", nofile) as running:
        yield running


@contextlib.contextmanager
def ws_echo(workdir: Path, max_connections: int = 0, nofile: int = 65536) -> Iterator[Running]:
    """autobahn's WebSocket server echoing messages; `max_connections` 0: no cap of its own."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.ws_echo", str(port), str(max_connections)]
    env_argv = ["env", f"PYTHONPATH={REPO}", *argv]
    with _running(env_argv, port, workdir, "ws_echo", nofile) as running:
        yield running


@contextlib.contextmanager
def flood(workdir: Path) -> Iterator[Running]:
    """A server that sends every connection up to 1 GiB (tests/support/flood.py)."""
    port = free_port()
    argv = ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "tests.support.flood", str(port)]
    with _running(argv, port, workdir, "flood", 1024) as running:
        yield running


@contextlib.contextmanager
def tls_server(workdir: Path) -> Iterator[Running]:
    """`openssl s_server` with a self-signed certificate made here: TLS and nothing else."""
    port = free_port()
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    argv = ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert), "-key", str(key), "-quiet"]
    with _running(argv, port, workdir, "tls", 1024) as running:
        yield running
