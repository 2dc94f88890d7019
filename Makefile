# The two commands of the README: `make demo` (the local fleet demo) and `make test`.
# Each installs what it needs: Debian packages, a venv, the CPU build of torch, ftte itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint system-deps install

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned, so pip takes the CPU wheel and never resolves a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[server,dev]'
	touch $(STAMP)

install: system-deps $(STAMP)

demo: install
	$(BIN)/ftte demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd ansible && ansible-playbook --syntax-check -i inventories/example site.yml >/dev/null
	cd ansible && ansible-lint -q

# Two workers, a test file each at a time (pytest-xdist): the suite is CPU-bound on 2 cores
# and its fleet tests wait on processes, so two files overlap well (5 min 46 s vs 9 min 44 s).
# The 15 slowest are listed at the end: suite time is tracked, this says where it goes.
test: install lint
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=15
