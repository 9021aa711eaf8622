# fairseq-seqkd: `make demo` and `make test` do everything on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fairseq-seqkd-installed
DEMO_DIR ?= runs/toy

.PHONY: install demo check test lint bench clean gpu-check cluster

install: $(STAMP)

# Re-run the installer only when what it installs changed; a ready .venv costs nothing.
$(STAMP): scripts/install.sh requirements.txt setup.py
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

demo: install
	PATH="$(abspath $(BIN)):$$PATH" bash examples/toy/demo.sh $(DEMO_DIR)

# the quick tier, after every change: unit tests and the fast integration tests (no pipeline runs)
check: install
	$(BIN)/ruff check fairseq_seqkd tests benchmarks examples recipes
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not recipes and not slow" tests

# the one-node SLURM cluster the SLURM tests run on (scripts/slurm_local.sh: Debian's packages, root only;
# elsewhere tests/test_slurm.py skips)
cluster:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then bash scripts/slurm_local.sh start; \
	else echo "make: not root on Debian: no local SLURM cluster, the SLURM tests will skip"; fi

# everything, what CI runs: the quick tier, the slow integration tests, the pipeline runs, the SLURM cluster's
test: install cluster
	$(BIN)/ruff check fairseq_seqkd tests benchmarks examples recipes
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: install
	$(BIN)/ruff check .

bench: install
	@for b in benchmarks/*.py; do case $$b in */synth.py|*/memstats.py) continue;; esac; echo "== $$b"; $(BIN)/python $$b --quick | tail -1; done

# every CUDA path on tiny models, PASS/FAIL each (scripts/gpu_smoke.sh); "no GPU: nothing to check" without one
gpu-check: install
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/gpu_smoke.sh $(or $(GPU_CHECK_DIR),runs/gpu_smoke)

clean:
	rm -rf runs build *.egg-info
