"""Every module, name and file the README and docs/ point a reader to exists.

A rename that forgets the prose is found here, not by the next reader who cannot find
`connscale.stats.parse_status`. Checked: dotted names `connscale.a.b[.Name]` (the module
imported, the rest looked up on it), repository paths (`connscale/...`, `tests/...`,
`bench/...`, `docs/...`) and the short paths the design notes use, read below `connscale/`
(`net/wire.py`, `net/profiles`, `net/dispatch.Loop`, `diagnose/costs.TLS_*`). The short
dotted form (`app.fleet`) is not: it reads like a config key (`control.listen`).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PACKAGES = sorted(p.name for p in (REPO / "connscale").iterdir() if (p / "__init__.py").is_file())

#: `connscale.` names in the prose that are no module: JUnit case names and files a user writes.
NOT_MODULES = {
    "connscale.yaml": "the config file",
    "connscale.secret": "a secret file in an example",
    "connscale.run": "a JUnit test case",
    "connscale.threshold": "a JUnit test case",
    "connscale.baseline": "a JUnit test case",
}

# Not inside a longer path or name: `~/.config/connscale/secret` and `/opt/connscale/bin` are
# a user's files, `bench/README.md` is checked as a whole.
EDGE = r"(?<![\w./~-])"
DOTTED = re.compile(EDGE + r"connscale(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(EDGE + r"(?:connscale|tests|bench|docs)/[\w./-]*[\w/]")
SHORT_PATH = re.compile(EDGE + r"(?:%s)/[\w/]*\w(?:\.\w+)*\*?" % "|".join(PACKAGES))


def mentions(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    """(where, what): every match, with its file and line."""
    found = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for match in pattern.finditer(line):
                found.append((f"{doc.name}:{number}", match.group(0).rstrip(".")))
    return found


def has_names(thing: object, names: list[str]) -> bool:
    """thing.a.b... exists; a last name ending in * is a prefix (`TLS_*`)."""
    for name in names:
        if name.endswith("*"):
            return any(n.startswith(name[:-1]) for n in dir(thing))
        if not hasattr(thing, name):
            return False
        thing = getattr(thing, name)
    return True


def resolves(dotted: str) -> bool:
    """The longest importable prefix, then attributes for the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        return has_names(module, parts[cut:])
    return False


def short_exists(mention: str) -> bool:
    """`net/wire.py`, `diagnose/templates/compare.html`, `net/profiles`, `net/tls`, `net/tls.tls_cause`."""
    path, _, names = mention.partition(".")
    base = REPO / "connscale" / path
    if names and base.with_name(f"{base.name}.{names}").is_file():
        return True
    if not names:
        return base.is_dir() or base.with_suffix(".py").is_file()
    if not base.with_suffix(".py").is_file():
        return False
    return has_names(importlib.import_module("connscale." + path.replace("/", ".")), names.split("."))


def test_every_dotted_connscale_name_in_the_docs_exists() -> None:
    names = [(where, name) for where, name in mentions(DOTTED) if name not in NOT_MODULES]
    assert names, "the pattern found no name at all"
    missing = [f"{where}: {name}" for where, name in names if not resolves(name)]
    assert not missing, "named in the docs, not in the package:\n" + "\n".join(missing)


def test_every_repository_path_in_the_docs_exists() -> None:
    paths = mentions(REPO_PATH)
    assert paths, "the pattern found no path at all"
    missing = [f"{where}: {path}" for where, path in paths if not (REPO / path).exists()]
    assert not missing, "named in the docs, not in the repository:\n" + "\n".join(missing)


def test_every_short_module_path_in_the_docs_exists() -> None:
    paths = mentions(SHORT_PATH)
    assert paths, "the pattern found no path at all"
    missing = [f"{where}: {path}" for where, path in paths if not short_exists(path)]
    assert not missing, "named in the docs, not under connscale/:\n" + "\n".join(missing)


@pytest.mark.parametrize(("text", "caught"), [
    ("parse them (`connscale.stats.parse_status`)", True),
    ("parse them (`connscale.metrics.status.parse_status`)", False),
    ("parse them (`connscale.metrics.status.no_such_name`)", True),
])
def test_a_stale_dotted_name_is_caught(text: str, caught: bool) -> None:
    names = [m.group(0) for m in DOTTED.finditer(text)]
    assert len(names) == 1 and resolves(names[0]) is not caught


def test_a_users_own_paths_are_not_read_as_the_repositorys() -> None:
    line = "keeps it in `~/.config/connscale/secret`; python: /opt/connscale/bin/python; see `connscale/compat/`"
    assert [m.group(0) for m in REPO_PATH.finditer(line)] == ["connscale/compat/"]
    assert [m.group(0) for m in SHORT_PATH.finditer("lives in `net/wire.py`, not in `x/net/wire.py`")] == ["net/wire.py"]


@pytest.mark.parametrize(("mention", "exists"), [
    ("net/wire.py", True), ("net/wire.pyc", False), ("net/profiles", True), ("net/tls", True),
    ("net/tls.tls_cause", True), ("net/tls.no_such_name", False), ("diagnose/costs.TLS_*", True),
    ("diagnose/budget.NO_SUCH_*", False), ("app/nowhere.py", False), ("app/run.own_tls", False),
])
def test_short_paths_are_read_below_the_package(mention: str, exists: bool) -> None:
    assert short_exists(mention) is exists
