# The two commands: `make run` serves the platform on its embedded defaults,
# `make test` runs the whole test suite. Both set up everything they need.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
export PLATFORM_DATA_DIR ?= $(CURDIR)/data

.PHONY: setup system-deps run serve test bench soak lint mutation clean proto

$(VENV)/.installed: pyproject.toml frontend/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	npm ci --prefix frontend --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

# The gRPC service's compiled descriptors, from streaming/oip/rpc/inference.proto (docs/oip.md).
proto: setup
	PY=$(PY) bash scripts/generate_oip_protos.sh

# Development server on the embedded defaults: SQLite, in-memory channel layer,
# demo models; authentication stays on (a demo key is written to data/).
run: setup
	DJANGO_DEBUG=1 $(PY) manage.py migrate --no-input
	DJANGO_DEBUG=1 $(PY) manage.py load_demo_models
	DJANGO_DEBUG=1 $(PY) manage.py bootstrap_demo --host $(HOST) --port $(PORT)
	DJANGO_DEBUG=1 $(PY) manage.py collectstatic --no-input -v0
	DJANGO_DEBUG=1 $(PY) -m platform_core.server -b $(HOST) -p $(PORT) platform_core.asgi:application

test: setup system-deps
	$(PY) -m pytest

# End-to-end benchmark (docs/benchmarks.md): the platform against the transport
# ceiling and the naive approach, one daphne process at a time on this machine.
# Results in bench-results/<timestamp>/ and bench-results/latest/. Take numbers
# on a quiet machine. Every server (with its children) runs on BENCH_SERVER_CPUS
# under taskset, the load generator on BENCH_CLIENT_CPUS (taskset -c lists, or
# none); a single-CPU machine runs both unpinned, with a warning.
BENCH_SERVER_CPUS ?= 0
BENCH_CLIENT_CPUS ?= 1
BENCH_DURATION_S ?= 6
BENCH_WARMUP_S ?= 2
BENCH_REPEATS ?= 2
BENCH_CONNECTIONS ?= 32
BENCH_IN_FLIGHT ?= 8
BENCH_PROCESSES ?= 1
BENCH_ENCODING ?= json
BENCH_ARGS ?=
bench: setup system-deps
	$(PY) -m bench.run --duration $(BENCH_DURATION_S) --warmup $(BENCH_WARMUP_S) --repeats $(BENCH_REPEATS) \
		--connections $(BENCH_CONNECTIONS) --in-flight $(BENCH_IN_FLIGHT) \
		--processes $(BENCH_PROCESSES) --encoding $(BENCH_ENCODING) \
		--server-cpus=$(BENCH_SERVER_CPUS) --client-cpus=$(BENCH_CLIENT_CPUS) $(BENCH_ARGS)

# The platform at half its measured maximum for SOAK_MINUTES: RSS over time and
# the prediction log checked against every request answered.
SOAK_MINUTES ?= 5
SOAK_ARGS ?=
soak: setup
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) --connections $(BENCH_CONNECTIONS) \
		--processes $(BENCH_PROCESSES) --encoding $(BENCH_ENCODING) \
		--server-cpus=$(BENCH_SERVER_CPUS) --client-cpus=$(BENCH_CLIENT_CPUS) $(SOAK_ARGS)

# Mutation testing (mutmut, configured in pyproject.toml): the batcher, the schema
# check, the protocol, the document codec and the prediction log's writer (row
# format, inserter, writer process, the writer thread's attempts) are changed one
# mutation at a time and their unit tests run against each change; a mutant the
# tests miss survives. Starts afresh each time (mutants/), then prints the score
# per module and overall (a mutant that made the tests time out counts as killed)
# and the survivors; `$(VENV)/bin/mutmut show <name>` shows one of them.
MUTATION_CHILDREN ?= $(shell nproc)
mutation: setup
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN)
	@$(VENV)/bin/mutmut results --all true | awk -F': ' ' \
		{ name = $$1; sub(/^ +/, "", name); module = name; sub(/\.x(ǁ|_).*/, "", module); \
		  total[module]++; all++; \
		  if ($$2 == "killed" || $$2 == "timeout") { killed[module]++; dead++ } else { left = left "\n  " name ": " $$2 } } \
		END { sort = "sort"; \
		      for (m in total) printf "%-42s %4d / %4d killed (%.1f%%)\n", m, killed[m], total[m], 100 * killed[m] / total[m] | sort; \
		      close(sort); \
		      printf "%-42s %4d / %4d killed (%.1f%%)\n", "all", dead, all, 100 * dead / all; \
		      if (left != "") printf "not killed:%s\n", left }'

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) data .pytest_cache
