"""`connscale compare RUN_A RUN_B [...]`: the runs side by side, on the terminal, as JSON and as a page.

Prints the metrics table (each run's value and its change against the first), the notes
and the settings that differ; writes the HTML page (`-o`, default `compare.html` here);
`--json` prints the comparison's record instead of the table. A run directory missing
files, cut short or from an older connscale is compared as far as it goes and says what
it lacks; only a path that is no directory, or one with nothing to compare, is a usage
error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from connscale.app.startup import EXIT_OK, EXIT_USAGE
from connscale.diagnose.compare import compare, text_table
from connscale.diagnose.runfiles import RunReadError, read_run

DEFAULT_PAGE = "compare.html"


def compare_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="connscale compare",
        description="Compare run directories: every headline metric with its change against the first run "
                    "(better or worse), the curves overlaid, and what differs between the hosts.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; the first is the reference")
    p.add_argument("-o", "--out", default=DEFAULT_PAGE, help=f"the HTML page (default ./{DEFAULT_PAGE})")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of the table")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        sys.stderr.write("connscale compare: give at least two run directories\n")
        return EXIT_USAGE
    if len(args.runs) > 26:
        sys.stderr.write("connscale compare: at most 26 run directories (A to Z)\n")
        return EXIT_USAGE
    runs = []
    for path in args.runs:
        try:
            run = read_run(path)
        except RunReadError as e:
            sys.stderr.write(f"connscale compare: {e}\n")
            return EXIT_USAGE
        if run.summary is None and not run.records:
            sys.stderr.write(f"connscale compare: {run.dir}: nothing to compare ({'; '.join(run.missing_words())})\n")
            return EXIT_USAGE
        runs.append(run)
    comparison = compare(runs)
    if args.json:
        print(json.dumps(comparison.to_wire(), indent=2, sort_keys=True))
    else:
        print(text_table(comparison))
    from connscale.diagnose.compare_page import write_compare

    try:
        page = write_compare(runs, args.out, comparison)
    except OSError as e:
        sys.stderr.write(f"connscale compare: cannot write {args.out}: {e.strerror or e}\n")
        return EXIT_USAGE
    print(f"page: {page}", file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK
