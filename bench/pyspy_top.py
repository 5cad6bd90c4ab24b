#!/usr/bin/env python3
"""Summarise a `py-spy record --format raw` file: top functions by self and
inclusive samples (idle samples are already left out by py-spy).

usage: python bench/pyspy_top.py FILE [-k 25] [--strip-prefix twisted/...]
"""

from __future__ import annotations

import argparse
import collections


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("-k", type=int, default=25, help="rows per table (default 25)")
    ap.add_argument("--lines", action="store_true", help="keep line numbers (default: group by function)")
    args = ap.parse_args()

    self_s: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    with open(args.file) as f:
        for row in f:
            row = row.rstrip("\n")
            if not row:
                continue
            stack, _, count = row.rpartition(" ")
            n = int(count)
            total += n
            frames = stack.split(";")
            if not args.lines:
                # "func (path/file.py:123)" -> "func (path/file.py)"
                frames = [fr.rsplit(":", 1)[0] + ")" if fr.endswith(")") and ":" in fr else fr for fr in frames]
            self_s[frames[-1]] += n
            for fr in set(frames):
                incl[fr] += n
    if not total:
        print("no samples")
        return
    print(f"{total} samples (on-CPU; idle excluded)")
    print(f"\n-- self time (top {args.k})")
    for fr, n in self_s.most_common(args.k):
        print(f"{100 * n / total:6.1f}%  {fr}")
    print(f"\n-- inclusive time (top {args.k}, frames above the reactor loop left out)")
    shown = 0
    for fr, n in incl.most_common():
        if n >= 0.97 * total:
            continue  # twistd/run/mainLoop: every sample has them
        print(f"{100 * n / total:6.1f}%  {fr}")
        shown += 1
        if shown >= args.k:
            break


if __name__ == "__main__":
    main()
