#!/usr/bin/env bash
# GPU benchmark of the mergec backends: linear, slerp, ties and dare_ties on ~250M-parameter
# synthetic checkpoints with torch (cuda) and jax (gpu), then both on the cpu; prints a
# markdown table of wall time and throughput. Not run in CI.
#
#   bash benchmarks/gpu.sh                       # GPU and CPU rows, 3 timed runs each
#   bash benchmarks/gpu.sh --gpu-only --runs 5
#   bash benchmarks/gpu.sh --cpu-only --small    # smoke test, no GPU needed
#   bash benchmarks/gpu.sh --json results.json   # also write the numbers
#
# Uses the dev venv (.venv; or set PYTHON). On a machine with an NVIDIA GPU where jax has
# no GPU backend, benchmarks/gpu_bench.py installs jax[cuda12] (same version as the
# installed jax) into that venv; pass --no-install to skip that. Any argument goes to
# benchmarks/gpu_bench.py (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [ ! -x "$PY" ]; then
    echo "benchmarks/gpu.sh: $PY not found; run \`make venv\` first (or set PYTHON)" >&2
    exit 2
fi
cd "$ROOT"
exec "$PY" benchmarks/gpu_bench.py "$@"
