# Set-up and everyday commands. `make demo` and `make test` each do all set-up on a fresh machine:
# check Java, create .venv, install the package, fetch the Delta jars once, then run.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
JARS := .jars/.fetched
PYTEST_ARGS ?=
now = $$(date +%H:%M:%S)

.PHONY: demo test setup check-java venv jars package clean clean-warehouse

demo: setup
	@echo "[$(now)] demo: generate -> ingest -> matrix on the local warehouse"
	$(BIN)/recsys-batch demo

test: setup
	@echo "[$(now)] tests"
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	@echo "[$(now)] tests done"

setup: check-java venv jars

check-java:
	@v=$$(java -version 2>&1 | sed -nE 's/.*version "([0-9]+)(\.([0-9]+))?.*/\1/p' | head -1); \
	if [ -z "$$v" ]; then echo "ERROR: Java not found. Spark 4 needs Java 17 (or 21): apt-get install openjdk-17-jdk-headless, or set JAVA_HOME/PATH." >&2; exit 1; fi; \
	if [ "$$v" -lt 17 ]; then echo "ERROR: Java $$v found, Spark 4 needs Java 17 (or 21). Install openjdk-17 and point JAVA_HOME at it." >&2; exit 1; fi; \
	echo "[$(now)] java $$v: ok"

venv: $(STAMP)
$(STAMP): pyproject.toml
	@echo "[$(now)] venv + install (pip's cache serves torch after the first install)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev,airflow]"
	@rm -f $(VENV)/.installed-* && touch $@
	@echo "[$(now)] install done"

jars: $(JARS)
$(JARS): jars/pom.xml | $(STAMP)
	@command -v mvn >/dev/null || { echo "ERROR: Maven (mvn) is needed once to fetch the Delta jars: apt-get install maven (or set RECSYS_BATCH_JARS_DIR to a pre-fetched folder)." >&2; exit 1; }
	@echo "[$(now)] fetching Delta jars with Maven into .jars/"
	$(BIN)/recsys-batch fetch-jars
	@touch $@

# the package as a zip for spark-submit --py-files, and a wheel for installing on cluster nodes
package: setup
	$(BIN)/recsys-batch package --out dist
	$(BIN)/python -m pip wheel -q --no-deps -w dist .

clean-warehouse:
	rm -rf warehouse spark-warehouse metastore_db derby.log

clean: clean-warehouse
	rm -rf $(VENV) .jars dist build *.egg-info
