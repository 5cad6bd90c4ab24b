#!/usr/bin/env bash
# The three connscale benchmarks with modest defaults (about 2 minutes), then
# a side-by-side table of Python vs the C reference on this machine.
#
#   bench/run_all.sh                 # N=10000
#   N=5000 WINDOW=10 bench/run_all.sh
#   OUT=/tmp/mybench bench/run_all.sh   # keep the JSON results there
#
# Loopback only; every process is stopped by pid; each step has its own
# internal bounds plus an outer `timeout` as a last resort.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
N=${N:-10000}
WINDOW=${WINDOW:-20}
OUT=${OUT:-$(mktemp -d /tmp/connscale-bench-XXXXXX)}
mkdir -p "$OUT"

if (( N < 1 || N > 19000 )); then
    echo "N must be 1..19000 (one process per side; RLIMIT_NOFILE is 20000)" >&2
    exit 2
fi

echo "# connscale benchmarks: N=$N, CPU window ${WINDOW}s, results in $OUT"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"

timeout -s TERM 150 "$PY" bench/mem_per_conn.py -n "$N" --json "$OUT/py_mem.json"
timeout -s TERM 180 "$PY" bench/cpu_per_rtt.py -n "$N" --window "$WINDOW" --json "$OUT/py_cpu.json"
timeout -s TERM 240 "$PY" bench/c_reference.py -n "$N" --window "$WINDOW" \
    --python-mem "$OUT/py_mem.json" --python-cpu "$OUT/py_cpu.json" --json "$OUT/c.json"

echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)  (shared machine: compare runs, not single numbers)"
