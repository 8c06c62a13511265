# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.openradio-installed
# torch/torchvision first: pinned to the releases we test with (they are the
# ones that lie on the CI machine's disk); pyproject declares wider ranges.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
# the versions the suite is known green with: without them pip backtracks for minutes through
# s3fs/aiobotocore/botocore and fails building an ancient release (`make constraints` refreshes it)
CONSTRAINTS ?= .ci/constraints.txt

.PHONY: demo test test-slow test-all lint venv clean constraints

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# the fast suite (minutes); the long training/torchrun tests are marked `slow` and run by
# `make test-slow` (CI, .ci/run, runs both)
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"
	@echo "(the long tests marked slow were skipped: run them with \`make test-slow\`, or everything with \`make test-all\`)"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP)
	$(PY) -m pytest -q

# ruff (configured in pyproject.toml: 120 columns): lint, and check that the tree is formatted
# (`ruff format .` formats it)
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

demo: $(STAMP)
	$(VENV)/bin/openradio demo --out demo-report

clean:
	rm -rf $(VENV) demo-report .pytest_cache

# refresh the pinned versions from the current (green) environment
constraints: $(STAMP)
	{ grep '^#' $(CONSTRAINTS); $(PY) -m pip freeze --exclude-editable | grep -v '^-e'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)
