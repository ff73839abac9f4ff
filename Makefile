# dynastore — the two commands of the contract are `make up` and `make test`.
# Both work on a machine with nothing but Python 3.11+, make and root: the virtual
# environment and the system tools the tests need are installed on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSDEPS_STAMP := .sysdeps.ok
NODES ?= 3
PYTEST_ARGS ?=

.PHONY: up test lint typecheck unit sysdeps bench bench-scale soak clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

# System tools for the fault suite (network namespaces, iptables, faketime).
$(SYSDEPS_STAMP): scripts/install-system-deps.sh
	scripts/install-system-deps.sh
	@touch $(SYSDEPS_STAMP)

sysdeps: $(SYSDEPS_STAMP)

up: $(STAMP)
	$(BIN)/dynastore up --nodes $(NODES)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) $(SYSDEPS_STAMP) lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Long runs: thousands of simulator seeds and longer fault-suite runs on real processes.
SOAK_SEEDS ?= 0..4999
SOAK_RUNS ?= 5
soak: $(STAMP) $(SYSDEPS_STAMP)
	$(BIN)/python -m dynastore.sim --seeds $(SOAK_SEEDS)
	DYNASTORE_SOAK_RUNS=$(SOAK_RUNS) $(BIN)/python -m pytest tests/faults -k soak -s $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest tests/core tests/storage tests/net $(PYTEST_ARGS)

# First the headline figures from C load generators, about 3 minutes: GET and PUT of 1 KB values under
# wrk against dynastore and etcd, with the clients on one node and then spread over the nodes (one wrk
# per node), redis-benchmark against redis (bench-results/wrk.json, wrk.md); then
# dynastore against etcd per second under wrk while a node is SIGSTOPped and while one is cut off by
# iptables, about 4 minutes, needs root (faults.json, faults.md). WRK_ARGS adds options to both.
# Then the YCSB comparison, about 15 minutes on 2 cores: workloads A, B, C and F against dynastore, etcd,
# redis, pysyncobj and a no-op target (the driver's ceiling), plus the Dynamo paper's measurements.
# Writes bench-results/results.json, results.md, throughput.png and latency.png. A peer that cannot
# be installed is skipped with a message. BENCH_ARGS adds options, e.g. BENCH_ARGS='--duration 30'.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=
WRK_ARGS ?=

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	scripts/install-bench-deps.sh || echo "bench: could not install every peer; those missing are skipped" >&2
	$(BIN)/dynastore bench wrk --out bench-results $(WRK_ARGS)
	$(BIN)/dynastore bench wrk --faults --out bench-results $(WRK_ARGS)
	$(BIN)/dynastore bench ycsb --target all --workload A,B,C,F --paper --out bench-results $(BENCH_ARGS)
# Membership and ring at 10, 100 and 1,000 simulated nodes: bench-results/sim-scale.json and .md.
	$(BIN)/dynastore bench sim-scale --out bench-results

# How cost grows with data: a 3-node cluster loaded through the API to 1 M and then 5 M keys of 1 KB
# (wrk, w=2, durable), measured at each size (GET/PUT throughput and p99, RSS, disk per key, start-up
# after a clean stop and after kill -9, the anti-entropy rebuild). Needs about 45 GB free under
# SCALE_DATA (checked before it starts; deleted afterwards unless SCALE_ARGS=--keep) and, at the load
# rate of a quiet 2-core machine, 1.5 to 3 hours. Writes bench-results/scale.json and scale.md.
SCALE_SIZES ?= 1000000,5000000
SCALE_DATA ?= bench-data
SCALE_ARGS ?=

bench-scale: $(BENCH_STAMP)
	@command -v wrk >/dev/null || apt-get install -y -qq --no-install-recommends wrk
	$(BIN)/dynastore bench scale --sizes $(SCALE_SIZES) --data-dir $(SCALE_DATA) --out bench-results $(SCALE_ARGS)

clean:
	rm -rf $(VENV) $(SYSDEPS_STAMP) .pytest_cache .mypy_cache .ruff_cache .hypothesis
