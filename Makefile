# meterwire developer entry points. Every target creates/uses the project's virtualenv (.venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUF_VERSION := 1.75.0
BUF := node_modules/.bin/buf
PROTOS := $(shell find protos/meterwire -name '*.proto')
# Arguments for `make run`, e.g. make run ARGS="--services telemetry,heartbeat".
ARGS ?=

.PHONY: install proto run test test-fast lint buf-lint buf-breaking fmt bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed protos/.generated

# Regenerates the *_pb2 modules and stubs whenever a .proto (or the generator) changes.
protos/.generated: $(VENV)/.installed $(PROTOS) hatch_build.py
	$(PY) hatch_build.py

proto: $(VENV)/.installed
	$(PY) hatch_build.py --force

# The usage console is on at $(HTTP_LISTEN) (its URL is printed once serving); HTTP_LISTEN= turns it off.
HTTP_LISTEN ?= 127.0.0.1:8080

run: install
	$(VENV)/bin/meterwire serve $(if $(HTTP_LISTEN),--http-listen $(HTTP_LISTEN)) $(ARGS)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# buf is pinned exactly in package.json; no lock file, because npm records only this platform's binary.
$(BUF): package.json
	npm install --no-package-lock --no-audit --no-fund --loglevel=error
	touch $@

buf-lint: $(BUF)
	cd protos && ../$(BUF) lint

# Compares the contracts with main's; run before changing a .proto on a branch.
buf-breaking: $(BUF)
	cd protos && ../$(BUF) breaking --against '../.git#branch=main,subdir=protos'

lint: install buf-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) node_modules protos/.generated
	find protos/meterwire \( -name '*_pb2*.py' -o -name '*.pyi' -o -name '__init__.py' \) -delete
