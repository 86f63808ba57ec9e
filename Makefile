# Two commands: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip

# torch first, pinned (the CPU build on disk); every later install keeps it.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]" "torch==2.13.0"
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

setup: $(VENV)/.installed

# One intra-op thread, as the benchmarks run: two-thread OpenMP teams spin-wait badly on a shared
# 2-core machine (an 8-epoch KB build: 595 s vs 22 s).
demo: export OMP_NUM_THREADS ?= 1
demo: setup
	$(BIN)/edgeadapt demo --out runs/demo

test: setup
	$(BIN)/python -m pytest tests

# The inner loop: everything but the whole-stage tests marked `slow` (under 2 minutes on 2 cores).
test-fast: setup
	$(BIN)/python -m pytest tests -m "not slow"

# Every benchmark that trains runs over 3 seeds (mean ± std); then the README tables are
# regenerated from the result JSON (`readme_tables.py --check` in the unit suite keeps them in sync).
# One intra-op thread unless set: on a shared 2-core box, 2-thread OpenMP teams spin-wait for a
# descheduled partner (the 8-epoch KB build took 595 s instead of 22 s under load 7).
bench: export OMP_NUM_THREADS ?= 1
bench: setup
	$(BIN)/python benchmarks/prune_fidelity.py --seeds 0,1,2
	$(BIN)/python benchmarks/drift_severity.py
	$(BIN)/python benchmarks/kb_widths.py --seeds 0,1,2
	$(BIN)/python benchmarks/online_stream.py --modality image --seeds 0,1,2 --rebuild
	$(BIN)/python benchmarks/online_stream.py --modality text --seeds 0,1,2 --rebuild
	$(BIN)/python benchmarks/llm_prune.py --seeds 0,1,2
	$(BIN)/python benchmarks/memory_planner.py
	$(BIN)/python benchmarks/offload.py
	$(BIN)/python benchmarks/offload_runtime.py
	$(BIN)/python benchmarks/prune_memory.py
	$(BIN)/python benchmarks/readme_tables.py

clean:
	rm -rf $(VENV) runs .pytest_cache
