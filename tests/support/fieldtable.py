"""The README's tables of a record's fields, made from the record itself.

Each field of a record carries its `doc` (`records.base.field`); `field_table`
renders them as the Markdown table the README shows, so tests/test_records.py can
check that the README lists exactly the record's fields, each said as the record
says it (paste the table its failure prints to bring the README up to date).
"""

from __future__ import annotations

import attrs

from connscale.records.base import field_doc


def field_table(cls: type, prefix: str = "") -> str:
    rows = ["| field | what |", "|---|---|"]
    for f in attrs.fields(cls):  # type: ignore[arg-type]
        rows.append(f"| `{prefix}{f.name}` | {field_doc(cls, f.name)} |")
    return "\n".join(rows)
