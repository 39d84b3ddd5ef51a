#!/usr/bin/env bash
# Speed/memory benchmark: mergec vs mergekit 0.1.5 vs the I/O floor.
#   bash benchmarks/run.sh            # full run (134m and 500m, 3 runs), writes docs/benchmarks.md
#   bash benchmarks/run.sh --quick    # smoke test on tiny checkpoints
# Any argument is passed to benchmarks/run.py (see --help). Uses the dev venv (.venv);
# build it with `make venv` first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "benchmarks/run.sh: $PY not found; run \`make venv\` first (or set PYTHON)" >&2
    exit 2
fi
cd "$ROOT"
export BENCH_ENTRY="bash benchmarks/run.sh"
exec "$PY" -m benchmarks.run "$@"
