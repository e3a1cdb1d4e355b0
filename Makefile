# The two README commands. Each creates (or reuses) .venv and installs what it needs.
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test bench utility peers format


$(STAMP): setup.py constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,gcp]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dptext demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.spine

# Issue-7 evidence: the utility benchmark needs scikit-learn (the bench extra); the peers
# benchmark builds its own pinned virtual environments for the peer packages.
$(VENV)/.installed-bench: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,gcp,bench]'
	touch $@

utility: $(VENV)/.installed-bench
	$(VENV)/bin/python -m benchmarks.utility

peers: $(STAMP)
	$(VENV)/bin/python -m benchmarks.peers

# ruff, configured in ruff.toml: `make format` rewrites, `make test` checks.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
