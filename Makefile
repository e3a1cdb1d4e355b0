# The two README commands. Each creates (or reuses) .venv and installs what it needs.
VENV   := .venv
PYTHON ?= python3
STAMP  := $(VENV)/.installed

.PHONY: demo test test-engines engines bench utility peers format wordnet


$(STAMP): setup.py constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,gcp]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dptext demo

# Beam's Flink and Spark job servers (pinned, sha256-checked, from Maven Central through mvn)
# into ~/.cache/dptext/engines: `dptext run --runner FlinkRunner|SparkRunner` and the engine tests.
engines: $(STAMP)
	$(VENV)/bin/python -m dptext.pipeline.engines.install

# WordNet 3.0's database files (Debian's wordnet-base) for syntf's synonym table: installed once,
# skipped when present (or when DPTEXT_WORDNET names a directory that holds them).
# Not root (a CI runner's user): through sudo, without a password prompt.
APT := $(if $(filter 0,$(shell id -u)),apt-get,sudo -n apt-get)
wordnet:
	test -f "$${DPTEXT_WORDNET:-/usr/share/wordnet}/data.noun" || $(APT) install -y -q --no-install-recommends wordnet-base \
		|| ($(APT) update -q && $(APT) install -y -q --no-install-recommends wordnet-base)

test: $(STAMP) engines wordnet
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest

# The long engine tests `make test` leaves out (marked slow): standalone Flink and Spark clusters,
# Parquet, gs://, faults, interrupts, and the capped ledger runs on Flink and Spark.
test-engines: $(STAMP) engines
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python -m pytest -m slow

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.spine

# Issue-7 evidence: the utility benchmark needs scikit-learn (the bench extra); the peers
# benchmark builds its own pinned virtual environments for the peer packages.
$(VENV)/.installed-bench: $(STAMP)
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e '.[test,gcp,bench]'
	touch $@

utility: $(VENV)/.installed-bench wordnet
	$(VENV)/bin/python -m benchmarks.utility

# mldp-text's SynTF reads WordNet through NLTK, whose reader also needs index.sense (wordnet-sense-index).
peers: $(STAMP) wordnet
	-test -f /usr/share/wordnet/index.sense || $(APT) install -y -q --no-install-recommends wordnet-sense-index
	$(VENV)/bin/python -m benchmarks.peers

# ruff, configured in ruff.toml: `make format` rewrites, `make test` checks.
format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
