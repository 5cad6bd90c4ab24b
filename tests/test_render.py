import pytest

from connscale.records.base import RecordError
from connscale.metrics.render import CLIENT_COLUMNS, format_table, render_stats


def stats(**over):
    """The `stats` verb's answer as it crosses PB (the record's wire form)."""
    base = {
        "elapsed_s": 12.0,
        "server": {"open": 10, "opened": 12, "closed": 2, "pongs": 40, "failure_total": 1,
                   "failures": {"steady:ECONNRESET": 1}},
        "client": {"open": 11, "opened": 12, "closed": 1, "pings": 41, "pongs": 40, "failure_total": 1,
                   "failures": {"first_ping:no_answer_from_server": 1}},
        "rtt_ms": {"p50": 0.25, "p90": 1.0, "p99": 2.5, "max": None},
        "ghosts": 1,
        "workers": {"server": 2, "client": 1},
        "clients": {"a1": {"connected": True, "target": 12, "open": 11, "connecting": 0, "workers": [{"index": 0}]}},
    }
    base.update(over)
    return base


def test_stats_summary_lines():
    text = render_stats(stats())
    assert text.splitlines() == [
        "server  open=10 opened=12 closed=2 pongs=40 failures=1 workers=2",
        "clients open=11 opened=12 closed=1 pings=41 pongs=40 failures=1 workers=1",
        "rtt_ms  p50=0.250 p90=1.000 p99=2.500 max=-",
        "ghosts  1 (client-open minus server-open)",
        "fail    client first_ping:no_answer_from_server=1",
        "fail    server steady:ECONNRESET=1",
        "client  a1: connected target=12 open=11 connecting=0 workers=1",
    ]


def test_stats_say_what_the_hub_left_out():
    text = render_stats(stats(truncated="worker rows left out: too large to send"))
    assert text.splitlines()[-1] == "note    worker rows left out: too large to send"


def test_a_stats_answer_that_does_not_fit_is_one_line():
    with pytest.raises(RecordError) as e:
        render_stats(stats(client={"open": "eleven"}))
    assert str(e.value) == "Stats.client: open: expected an integer, got 'eleven'"
    with pytest.raises(RecordError, match="^Stats.server: missing$"):
        render_stats({"elapsed_s": 1.0, "client": {}})


def test_table_aligns_columns_and_says_none():
    rows = [{"name": "a1", "connected": True, "host": "h", "workers": 2, "target": 100, "open": 99},
            {"name": "agent-2", "connected": False, "host": "h2", "workers": 0, "target": 0, "open": 0}]
    lines = format_table(rows, CLIENT_COLUMNS).splitlines()
    assert lines[0].split() == list(CLIENT_COLUMNS)
    assert lines[1].split() == ["a1", "True", "h", "2", "100", "99"]
    # Text columns start where their header starts; number columns end where it ends.
    start = lines[0].index("connected")
    assert lines[1][start:start + 4] == "True" and lines[2][start:start + 5] == "False"
    end = lines[0].index("target") + len("target")
    assert lines[1][:end].endswith(" 100") and lines[2][:end].endswith(" 0")
    assert lines[2].startswith("agent-2  False")
    assert format_table([], CLIENT_COLUMNS) == "(none)"


def test_table_of_named_records_with_missing_and_nested_cells():
    text = format_table([{"open": 1, "p50": 0.25}, {"open": 20, "p50": None, "ips": ["a", "b"]}],
                        names=["client-a", "b"])
    assert text.splitlines() == [
        "          open    p50  ips",
        "client-a     1  0.250  -",
        "b           20      -  a,b",
    ]
