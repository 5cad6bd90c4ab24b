"""diagnose.fixes: one text per cause, said the same by the report, the walls, search mode and the README."""

from __future__ import annotations

from pathlib import Path

from connscale.diagnose.fixes import CAUSES, advise, fix_of, readme_table
from connscale.diagnose.records import Slo
from connscale.diagnose.search import judge
from connscale.diagnose.walls import name_wall
from connscale.diagnose.window import Context, Window

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_table_is_the_fix_table() -> None:
    table = readme_table()
    assert table in README.read_text(), "README's failure-cause table differs; paste:\n" + table


def test_every_failure_cause_of_the_readme_has_its_row() -> None:
    for cause in ("EMFILE", "EADDRINUSE", "route_quota", "protocol_error"):
        assert f"`{cause}`" in readme_table()
        assert advise(cause).startswith(CAUSES[cause].means)


def test_a_cause_without_a_row_gets_the_unknown_fix() -> None:
    assert fix_of("EWHATEVER") is CAUSES["unknown"]
    assert CAUSES["unknown"].fix[0] in advise("EWHATEVER")


def test_the_walls_say_the_causes_fix() -> None:
    w = Window(open=100, failures={"connect:ECONNREFUSED": 5, "connect:route_quota": 3})
    assert name_wall("connect:ECONNREFUSED", w, Context()).fix == CAUSES["ECONNREFUSED"].fix
    assert name_wall("connect:route_quota", w, Context()).fix == CAUSES["route_quota"].fix


def test_search_says_the_same_fix_as_the_walls() -> None:
    plateau = judge(0, 1000, [], Slo(), placed=500)
    assert plateau.cause is not None and plateau.cause.fix == CAUSES["route_quota"].fix
