# Shoal: `make run` starts a node on ./shoal-data; `make test` runs every test.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck mutate bench bench-core bench-storage protos clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/shoal serve

# Node clients for the Hrana conformance tests; reinstalled only when the lock file changes.
NODE_DEPS := tests/conformance/node/node_modules/.package-lock.json
$(NODE_DEPS): tests/conformance/node/package-lock.json
	npm ci --prefix tests/conformance/node --no-audit --no-fund

# pytest: two workers, a test module to one worker (its module-scoped node and moto server
# start once), modules handed out in collection order (--no-loadscope-reorder): the slow
# few-test modules (tests/chaos, tests/integration) start early and the many quick ones
# (tests/unit last) fill in at the end. xdist's default order (most tests first) ran the
# slow modules last, where one long test could leave the other worker idle.
test: $(STAMP) $(NODE_DEPS)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/mypy
	$(BIN)/pytest -q -n 3 --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check src tests bench tools

typecheck: $(STAMP)
	$(BIN)/mypy

# Mutation testing of the modules that guard data and access (issue 19, docs/testing.md):
# tens of minutes, so not part of `make test`. MODULE=engine/lease.py for one module,
# MODULE=all for every module in tools/mutate.py's table, JOBS=N workers (default: CPUs).
# Survivors and the summary go to mutants/ (git-ignored).
mutate: $(STAMP)
	$(BIN)/python -m tools.mutate $(if $(filter all,$(MODULE)),--all,$(foreach m,$(MODULE),--module $(m))) $(if $(JOBS),-j $(JOBS)) $(ARGS)

# Shoal against PostgreSQL, PgBouncer, PocketBase, Datasette, SQLite and litestream: installs what it
# needs (apt-get, pip), writes bench/REPORT.md. ARGS=--quick for a run under 5 minutes.
bench: $(STAMP)
	$(BIN)/python -m bench $(ARGS)

bench-core: $(STAMP)
	$(BIN)/python -m bench.core

# Bottomless storage (issue 3): shipping on/off, remote durability, branches, restore, cold
# open, litestream side by side. ARGS=--quick for a smoke run, ARGS="--sizes 10,100" to skip 1 GB.
bench-storage: $(STAMP)
	$(BIN)/python -m bench.storage $(ARGS)

# The protobuf modules of libSQL's V1 sync protocol (src/shoal/server/libsql_pb) from its
# .proto files, with typed stubs: protoc from grpcio-tools in a venv of its own. Pin the
# runtime (pyproject's protobuf) at or above the gencode version the modules name.
PROTOC_VENV := $(VENV)/protoc
protos:
	$(PY) -m venv $(PROTOC_VENV)
	$(PROTOC_VENV)/bin/pip install --quiet grpcio-tools==1.85.1 mypy-protobuf==5.1.0
	cd src && ../$(PROTOC_VENV)/bin/python -m grpc_tools.protoc -I . --python_out=. \
		--mypy_out=. --plugin=protoc-gen-mypy=../$(PROTOC_VENV)/bin/protoc-gen-mypy \
		shoal/server/libsql_pb/*.proto

clean:
	rm -rf $(VENV) shoal-data .pytest_cache .mypy_cache .ruff_cache
