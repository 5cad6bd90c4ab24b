"""The live view: a rich dashboard on a terminal, plain lines elsewhere; and
`connscale ctl watch` against a real hub in both modes."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from connscale.app.live import MAX_WORKER_ROWS, Frame, LiveView, RunInfo, dashboard, plain_line
from connscale.metrics.records import Stats
from connscale.metrics.status import parse_status
from tests.support.timelines import make_records


def frame(before: dict, now: dict) -> Frame:
    """Two seconds as the live view gets them (the hub's answers, checked as `Stats`)."""
    return Frame.of(Stats.from_wire(before), Stats.from_wire(now))


def render(renderable: Any, width: int = 120) -> str:
    from rich.console import Console

    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def two_seconds(**change: Any) -> tuple[dict, dict]:
    records = make_records(fail_at_step=2)
    return records[7], records[8]   # inside ramp:2: connects, pongs and failures moving


def test_dashboard_shows_counts_rates_rtt_failures_agents_and_workers() -> None:
    before, now = two_seconds()
    text = render(dashboard(frame(before, now), RunInfo("ramp:2", 2, 3, 6000), "connscale run"))
    assert f"open {now['client']['open']:,} / 6,000" in text
    assert "ramp:2 (step 2/3)" in text
    assert f"connects/s {now['client']['opened'] - before['client']['opened']:,}" in text
    assert f"p99 {now['rtt_window_ms']['p99']:.2f} ms" in text
    assert "failures by cause" in text and "connect:EADDRNOTAVAIL" in text
    assert "local" in text and "connected" in text
    for label in ("server #1", "server #2", "local #1"):
        assert label in text
    # CPU from the two seconds' cumulative CPU time (the synthetic workers add 0.1 + open/20000 s a second).
    cpu = (0.1 + now["client"]["open"] / 20000) * 100
    assert f"{cpu:.0f}" in text.split("local #1")[1].split("\n")[0]


def test_dashboard_prefers_the_workers_own_load_and_caps_the_rows() -> None:
    before, now = two_seconds()
    now = dict(now, server_workers=[
        dict(w, index=i, pid=1000 + i, load={"cpu": 0.97 if i == 30 else 0.1, "lag_ms_max": 250.0 if i == 30 else 1.5})
        for i, w in enumerate(now["server_workers"] * 20)])
    text = render(dashboard(frame(before, now)))
    rows = [line for line in text.splitlines() if "server #" in line]
    assert len(rows) == MAX_WORKER_ROWS - 1  # plus the client's row, busiest first
    assert rows[0].split()[:2] == ["server", "#31"] and "97" in rows[0] and "250.0" in rows[0]
    assert "more workers (less busy) not shown" in text


def test_an_agents_row_shows_its_busiest_workers_cpu_and_worst_loop_lag() -> None:
    before, now = two_seconds()
    agent = dict(now["clients"]["local"])
    agent["workers"] = [dict(w, index=i, load={"cpu": cpu, "lag_ms_max": lag})
                        for i, (w, cpu, lag) in enumerate(zip(agent["workers"] * 2, (0.35, 0.93), (4.0, 180.5)))]
    now = dict(now, clients={"local": agent, "quiet": {"connected": True, "target": 0, "workers": []}})
    text = render(dashboard(frame(before, now)), width=160)
    header = next(line for line in text.splitlines() if "busiest cpu %" in line)
    assert "worst lag ms" in header
    local = next(line for line in text.splitlines() if line.strip().startswith("local ") and "connected" in line)
    assert local.split()[-2:] == ["93", "180.5"], local
    quiet = next(line for line in text.splitlines() if line.strip().startswith("quiet "))
    assert quiet.split()[-2:] == ["-", "-"], quiet


def test_plain_lines_every_few_seconds_and_the_last_one_at_the_end() -> None:
    records = make_records()
    now = [0.0]
    out = io.StringIO()
    view = LiveView(out=out, tty=False, every=5.0, clock=lambda: now[0])
    for r in records[:12]:
        view.show(Stats.from_wire(r))
        now[0] += 1.0
    view.final()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4  # at 0, 5 and 10 s, and the last frame (11 s)
    parsed = [parse_status(line) for line in lines]
    assert [p["open"] for p in parsed] == [str(records[i]["client"]["open"]) for i in (0, 5, 10, 11)]
    assert parsed[-1]["phase"] == records[11]["phase"] and parsed[-1]["rtt_p99_ms"] != ""
    assert {"t", "target", "server_open", "ghosts", "connects_per_s", "pings_per_s", "rtt_p50_ms",
            "failures"} <= set(parsed[0])
    view.message("holding 6000 connections")
    assert out.getvalue().endswith("holding 6000 connections\n")


def test_incidents_are_shown_once_each() -> None:
    records = make_records(fail_at_step=2)
    incident = {"elapsed_s": 8.0, "trigger": "failures", "wall": "ephemeral_ports",
                "headline": "EADDRNOTAVAIL on connect",
                "fix": ["add --source-ip 127.0.0.3"]}
    out = io.StringIO()
    view = LiveView(out=out, tty=False, every=100.0, clock=lambda: 0.0)
    view.show(Stats.from_wire(records[7]))
    view.show(Stats.from_wire(dict(records[8], incidents=[incident])))
    view.show(Stats.from_wire(dict(records[9], incidents=[incident])))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("incident:")]
    assert lines == ["incident: ephemeral_ports: EADDRNOTAVAIL on connect; fix: add --source-ip 127.0.0.3"]
    text = render(dashboard(frame(records[8], dict(records[9], incidents=[incident]))))
    assert "incidents" in text and "ephemeral_ports" in text and "add --source-ip 127.0.0.3" in text


def test_plain_line_names_each_failure_cause() -> None:
    records = make_records(fail_at_step=2)
    line = plain_line(frame(records[8], records[9]))
    n = records[9]["client"]["failures"]["connect:EADDRNOTAVAIL"]
    assert n > 0 and f"fail.connect.EADDRNOTAVAIL={n}" in line and f"failures={n}" in line


def test_terminal_mode_redraws_in_place() -> None:
    records = make_records()
    out = io.StringIO()
    view = LiveView(out=out, tty=True, width=110)
    view.show(Stats.from_wire(records[3]))
    view.show(Stats.from_wire(records[4]), RunInfo("ramp:2", 2, 3, 6000))
    view.message("a note above the dashboard")
    view.final()
    text = out.getvalue()
    assert "\x1b[" in text                      # a terminal gets escape codes
    assert text.count("╭") >= 2                 # drawn twice, in place
    assert "a note above the dashboard" in text and "ramp:2 (step 2/3)" in text


# ---------------------------------------------------------------- against a real hub


@pytest.mark.slow
def test_ctl_watch_against_a_real_hub_plain_and_on_a_terminal(tmp_path: Path) -> None:
    from tests.support.hub import Hub

    hub = Hub(tmp_path)
    proc = hub.start()
    try:
        with hub.agent("w1") as agent:
            agent.wait_line("registered with controller", 30)
            assert hub.ctl("start", "200", "--client", "w1").returncode == 0
            assert hub.ctl("phase", "hold:1").stdout.strip() == "phase hold:1"
            hub.wait_count(200, "w1")
            piped = hub.ctl("watch", "--count", "3", "--interval", "0.5")
            assert piped.returncode == 0, piped.stderr
            lines = [parse_status(line) for line in piped.stdout.splitlines()]
            assert len(lines) == 3, piped.stdout
            assert all(line["open"] == "200" and line["target"] == "200" and line["phase"] == "hold:1"
                       for line in lines), piped.stdout
            raw = watch_on_a_terminal(hub)
            assert "\x1b[" in raw  # drawn for a terminal
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
            assert "╭" in text and "open 200 / 200" in text and "w1 #1" in text and "server #1" in text
    finally:
        proc.stop()
    bad = hub.ctl("watch", "--count", "1")
    assert bad.returncode == 3 and "cannot reach the controller" in bad.stderr


def watch_on_a_terminal(hub: Any) -> str:
    """`ctl watch --count 2` with a pseudo-terminal as its stdout."""
    from tests.support.procs import connscale

    master, slave = pty.openpty()
    env = dict(os.environ, **hub.env, COLUMNS="120", LINES="50", TERM="xterm-256color")
    p = subprocess.Popen(connscale("ctl", "--config", str(hub.config), "watch", "--count", "2", "--interval", "0.5"),
                         stdout=slave, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                break
        assert p.wait(10) == 0, b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return b"".join(chunks).decode(errors="replace")
