#!/usr/bin/env bash
# Create the separate virtual environment used by the optional mergekit parity
# suite (tests/parity). mergekit 0.1.5 pins transformers>=5 and friends, which
# must not leak into the project's own .venv, so it lives in its own folder.
#
#   scripts/parity-venv.sh            # create or complete the venv (idempotent)
#   MERGEKIT_VENV=/some/dir scripts/parity-venv.sh
#
# torch is installed first, pinned to the exact version the project's dev venv
# uses (a CPU build), so pip resolves mergekit's "torch>=2.0" against it instead
# of pulling a different, multi-GB build. Do not change that pin casually.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MERGEKIT_VENV:-$ROOT/benchmarks/work/mergekit-venv}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"  # the version the machine's pip has a local CPU wheel for
MERGEKIT_VERSION="0.1.5"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi

PY="$VENV/bin/python"

have() {  # have DIST VERSION -> true when DIST==VERSION is installed
    "$PY" - "$1" "$2" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
try:
    v = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.split("+")[0] == sys.argv[2] else 1)
PYEOF
}

if have torch "$TORCH_VERSION"; then
    echo "torch $TORCH_VERSION already installed"
else
    "$PY" -m pip install "torch==$TORCH_VERSION"
fi

if have mergekit "$MERGEKIT_VERSION" && [ -x "$VENV/bin/mergekit-yaml" ]; then
    echo "mergekit $MERGEKIT_VERSION already installed"
else
    # keep the torch installed above: mergekit only needs torch>=2.0
    "$PY" -m pip install "torch==$TORCH_VERSION" "mergekit==$MERGEKIT_VERSION"
fi

"$PY" -c "import torch, mergekit; print('torch', torch.__version__)"
echo "mergekit venv ready: $VENV"
echo "run the suite with: .venv/bin/python -m pytest tests/parity -m parity"
