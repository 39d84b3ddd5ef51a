# mergec developer commands. `make venv` builds .venv from scratch; the other
# targets build it first when needed. `make test` also builds .venv-core, a second
# environment without torch or jax, for the torch-free leg of the tests.

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
MERGEC    := $(VENV)/bin/mergec
STAMP     := $(VENV)/.stamp
# the torch-free environment: mergec and its test extra only (NumPy backend)
CORE_VENV := .venv-core
CORE_PY   := $(CORE_VENV)/bin/python
CORE_STAMP := $(CORE_VENV)/.stamp
# the tests the torch-free leg runs
CORE_MARKS := not torch and not jax
# torch is pinned here, before the project, so that pip keeps this build
# (pyproject only asks for torch>=2.2).
TORCH     ?= torch==2.13.0
EXTRAS    ?= torch,jax,test,test-torch,ray,fast
JOBS      ?= 2
PYTEST_ARGS ?=
DEMO_CKPT ?= recipes/ckpt
DEMO_OUT  ?= out

.DEFAULT_GOAL := help
.PHONY: help venv venv-core demo test test-full test-core fuzz parity fmt-check docs clean distclean

help:
	@echo "make venv       create .venv and install mergec with its torch, jax and test extras"
	@echo "make venv-core  create .venv-core: mergec with its test extra, without torch or jax"
	@echo "make demo       write the demo checkpoints and build recipes/demo.merge into $(DEMO_OUT)/"
	@echo "make test       run the test suite in .venv, then its torch-free part in .venv-core"
	@echo "make test-full  run the test suite in .venv (torch and jax installed)"
	@echo "make test-core  run the tests that need neither torch nor jax in .venv-core"
	@echo "make fuzz       10,000 generated recipes and 1,000 corrupted checkpoints (make test runs 1,000 and 100)"
	@echo "make parity     compare with mergekit 0.1.5 (needs scripts/parity-venv.sh first)"
	@echo "make fmt-check  check that recipes/*.merge are formatted"
	@echo "make docs       regenerate the generated docs"
	@echo "make clean      remove outputs and build artefacts (keeps .venv and .venv-core)"
	@echo "make distclean  clean, and remove .venv and .venv-core"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet '$(TORCH)'
	$(PIP) install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

venv-core: $(CORE_STAMP)

# No torch extra here, and nothing in the test extra pulls torch or jax in (transformers
# does not): checked, so that the torch-free leg cannot pass with torch present.
$(CORE_STAMP): pyproject.toml
	@test -x $(CORE_PY) || $(PYTHON) -m venv $(CORE_VENV)
	$(CORE_PY) -m pip install --quiet --upgrade pip
	$(CORE_PY) -m pip install --quiet -e '.[test]'
	@if $(CORE_PY) -c 'import importlib.util as u, sys; \
	    sys.exit(not [m for m in ("torch", "jax") if u.find_spec(m)])'; then \
	  echo "error: $(CORE_VENV) has torch or jax installed; it must have neither" >&2; \
	  exit 1; \
	fi
	@touch $(CORE_STAMP)

demo: venv
	$(PY) -m mergec.demo $(DEMO_CKPT)
	$(MERGEC) build recipes/demo.merge --out-dir $(DEMO_OUT) --force
	@echo
	@echo "Merged checkpoints are under $(DEMO_OUT)/:"
	@find $(DEMO_OUT) -name config.json -exec dirname {} \; | sort | while read -r d; do \
	  echo "  $$d"; \
	  echo "    load: $(PY) -c \"from transformers import AutoModelForCausalLM as M; print(M.from_pretrained('$$d'))\""; \
	done

# Both legs run even when the first fails; the result fails if either does.
test: venv venv-core
	@rc=0; \
	$(MAKE) --no-print-directory test-full || rc=1; \
	$(MAKE) --no-print-directory test-core || rc=1; \
	exit $$rc

test-full: venv
	@echo "== the whole test suite ($(VENV): torch and jax installed)"
	@if $(PY) -c 'import xdist' 2>/dev/null; then n="-n $(JOBS)"; else n=""; fi; \
	echo "$(PY) -m pytest -q $$n $(PYTEST_ARGS)"; \
	$(PY) -m pytest -q $$n $(PYTEST_ARGS)

# pytest's exit status 5 (no test selected: PYTEST_ARGS named only torch or jax tests)
# is not a failure of this leg.
test-core: venv-core
	@echo "== the torch-free leg ($(CORE_VENV): neither torch nor jax; the NumPy backend)"
	@if $(CORE_PY) -c 'import xdist' 2>/dev/null; then n="-n $(JOBS)"; else n=""; fi; \
	echo "$(CORE_PY) -m pytest -q $$n -m '$(CORE_MARKS)' $(PYTEST_ARGS)"; \
	$(CORE_PY) -m pytest -q $$n -m '$(CORE_MARKS)' $(PYTEST_ARGS) || test $$? -eq 5

# The fuzz tests at ten times the size `make test` runs them: no case may end in an internal
# error (E599) or an exception that is not a diagnostic, and every build must be readable.
fuzz: venv
	FUZZ_RECIPES=10000 FUZZ_CHECKPOINTS=1000 $(PY) -m pytest -q -n $(JOBS) tests/test_fuzz.py
# Not part of `make test`: needs mergekit 0.1.5 in its own venv (scripts/parity-venv.sh,
# or MERGEKIT_PYTHON). Builds every tests/parity config with mergekit, the hand-written
# recipes and the `mergec import` of each config with mergec, and compares every tensor.
MERGEKIT_PYTHON ?= benchmarks/work/mergekit-venv/bin/python

parity: venv
	@if [ ! -x "$(MERGEKIT_PYTHON)" ]; then \
	  echo "make parity: no mergekit at $(MERGEKIT_PYTHON); run scripts/parity-venv.sh" \
	    "or set MERGEKIT_PYTHON" >&2; \
	  exit 1; \
	fi
	MERGEKIT_PYTHON="$(abspath $(MERGEKIT_PYTHON))" PARITY_REPORT=parity-report.jsonl \
	  $(PY) -m pytest -q -m parity tests/parity $(PYTEST_ARGS)

fmt-check: venv
	$(MERGEC) fmt --check recipes/*.merge

docs: venv
	$(PY) -m mergec.docs_gen

clean:
	rm -rf $(DEMO_OUT) $(DEMO_CKPT) build dist *.egg-info .pytest_cache .hypothesis
	find . \( -path ./$(VENV) -o -path ./$(CORE_VENV) \) -prune -o -name __pycache__ -type d \
	  -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(CORE_VENV)
