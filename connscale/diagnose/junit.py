"""A run's gates as JUnit XML (`connscale run --junit FILE`): what CI systems show without glue.

One test suite, `connscale`, with one test case per threshold (class `connscale.threshold`)
and per metric compared with the baseline (`connscale.baseline`), and one for the run's
own verdict (`connscale.run`: a run that did not hold its target fails its job even when
every threshold passes, and the report should say why). A regression or a failed
threshold is a `<failure>` with the line `connscale run` printed; a metric that could not
be compared is `<skipped>`. Jenkins, GitLab and GitHub Actions' test reporters read this
form (the schema Ant and Surefire write). Built with `xml.etree`, so any text is escaped.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from connscale.diagnose import baseline, hostdiff, thresholds
from connscale.diagnose.records import Summary


def _case(suite: ET.Element, classname: str, name: str, failure: str | None = None, skipped: str | None = None,
          details: str = "") -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
    if failure is not None:
        ET.SubElement(case, "failure", message=failure, type="connscale").text = details or failure
    elif skipped is not None:
        ET.SubElement(case, "skipped", message=skipped)


def junit_xml(summary: Summary) -> bytes:
    """The test report of a finished run's summary."""
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name="connscale")
    verdict_ok = summary.verdict in ("held", "knee")
    _case(suite, "connscale.run", f"verdict: {summary.verdict}",
          failure=None if verdict_ok else (summary.reason or f"the run ended {summary.verdict}"),
          details=summary.explanation.headline if summary.explanation is not None else "")
    for t in summary.thresholds:
        line = thresholds.describe(t)
        _case(suite, "connscale.threshold", t.expression, failure=None if t.passed else line)
    if summary.baseline is not None:
        changed = "\n".join(hostdiff.describe(d) for d in summary.baseline.changed)
        for c in summary.baseline.checks:
            line = baseline.describe(c)
            details = line + (f"\nwhat changed between the hosts:\n{changed}" if changed else "")
            _case(suite, "connscale.baseline", f"{c.metric} vs {summary.baseline.run_dir}",
                  failure=line if c.regressed else None, skipped=c.note if c.outcome == "skipped" else None,
                  details=details)
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(1 for c in cases if c.find("failure") is not None)))
    suite.set("skipped", str(sum(1 for c in cases if c.find("skipped") is not None)))
    suite.set("errors", "0")
    suite.set("time", f"{summary.duration_s:.3f}")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_junit(summary: Summary, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.write_bytes(junit_xml(summary))
    return out
