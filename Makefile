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

.PHONY: install proto run test litellm-venv test-fast lint buf-lint buf-breaking fmt bench clean

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

# Outside CI a LiteLLM virtualenv that cannot be built (no registry) is not fatal: tests/litellm then skip, saying so.
test: install
	@$(MAKE) --no-print-directory litellm-venv || { [ "$${CI:-}" != true ] && [ "$${MW_REQUIRE_LITELLM:-}" != 1 ] \
		&& echo "make test: .venv-litellm could not be built; tests/litellm will skip"; }
	$(PY) -m pytest $(PYTEST_ARGS)

# The LiteLLM proxy of tests/litellm and benchmarks/litellm_overhead.py, in a virtualenv of its own (as users run
# it): `pip install -e '.[litellm]'` puts the pinned litellm[proxy] and meterwire side by side there, so .venv never
# holds LiteLLM's pins. Built once (~3 min), kept by its stamp until pyproject.toml changes.
LITELLM_VENV ?= .venv-litellm
$(LITELLM_VENV)/.installed: pyproject.toml protos/.generated
	test -x $(LITELLM_VENV)/bin/python || $(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet -e '.[litellm]'
	touch $@

litellm-venv: $(LITELLM_VENV)/.installed

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
	rm -rf $(VENV) $(LITELLM_VENV) node_modules protos/.generated
	find protos/meterwire \( -name '*_pb2*.py' -o -name '*.pyi' -o -name '__init__.py' \) -delete
