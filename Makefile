# mergec developer commands. `make venv` builds .venv from scratch; the other
# targets build it first when needed.

PYTHON    ?= python3
VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(PY) -m pip
MERGEC    := $(VENV)/bin/mergec
STAMP     := $(VENV)/.stamp
# torch is pinned here, before the project, so that pip keeps this build
# (pyproject only asks for torch>=2.2).
TORCH     ?= torch==2.13.0
EXTRAS    ?= torch,jax,test
JOBS      ?= 2
PYTEST_ARGS ?=
DEMO_CKPT ?= recipes/ckpt
DEMO_OUT  ?= out

.DEFAULT_GOAL := help
.PHONY: help venv demo test fmt-check docs clean distclean

help:
	@echo "make venv       create .venv and install mergec with its torch, jax and test extras"
	@echo "make demo       write the demo checkpoints and build recipes/demo.merge into $(DEMO_OUT)/"
	@echo "make test       run the test suite"
	@echo "make fmt-check  check that recipes/*.merge are formatted"
	@echo "make docs       regenerate the generated docs"
	@echo "make clean      remove outputs and build artefacts (keeps .venv)"
	@echo "make distclean  clean, and remove .venv"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet '$(TORCH)'
	$(PIP) install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

demo: venv
	$(PY) -m mergec.demo $(DEMO_CKPT)
	$(MERGEC) build recipes/demo.merge --out-dir $(DEMO_OUT) --force
	@echo
	@echo "Merged checkpoints are under $(DEMO_OUT)/:"
	@find $(DEMO_OUT) -name config.json -exec dirname {} \; | sort | while read -r d; do \
	  echo "  $$d"; \
	  echo "    load: $(PY) -c \"from transformers import AutoModelForCausalLM as M; print(M.from_pretrained('$$d'))\""; \
	done

test: venv
	@if $(PY) -c 'import xdist' 2>/dev/null; then n="-n $(JOBS)"; else n=""; fi; \
	echo "$(PY) -m pytest -q $$n $(PYTEST_ARGS)"; \
	$(PY) -m pytest -q $$n $(PYTEST_ARGS)

fmt-check: venv
	$(MERGEC) fmt --check recipes/*.merge

docs: venv
	$(PY) -m mergec.docs_gen

clean:
	rm -rf $(DEMO_OUT) $(DEMO_CKPT) build dist *.egg-info .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
