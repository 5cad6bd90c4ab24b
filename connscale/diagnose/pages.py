"""The HTML pages' one jinja2 environment (the run report and `connscale compare`), and writing a page.

Every template is autoescaped: run names, config paths, incident words, manifest values and
anything else a run directory says are data, never markup, so a value that reaches a page
without a thought is escaped rather than injected. Both pages wear one stylesheet
(`templates/style.css`, included by each). StrictUndefined: a name a template asks for and the
code did not pass is an error, never an empty string on the page. Nothing is marked safe: the
pages pass values, never markup (the plots are base64 text in an attribute, which escaping
leaves as it is).

jinja2 is imported here, and this module only by the pages' modules, which the CLI imports lazily:
hubs and workers never load it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import jinja2

ENV = jinja2.Environment(loader=jinja2.PackageLoader("connscale.diagnose", "templates"),
                         autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context: Any) -> str:
    """A page from its template in `templates/`."""
    return ENV.get_template(template).render(context)


def write_page(path: Path, page: str) -> Path:
    """Write an HTML page whole: a reader never sees half of it."""
    # A temporary file of our own, made exclusively beside the page: a name someone
    # left there (a link to a file of ours) is never followed, only the page replaced.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
