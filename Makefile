# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates the virtual environment on first use and installs what is needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The local CPU build; a GPU user installs the CUDA build of torch into $(VENV) first (README).
TORCH ?= torch==2.13.0

.PHONY: demo test bench-quick report clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

# The test suite also covers the Torch-Pruning peer: its extra, installed on top of the torch
# already in $(VENV) (torch-pruning requires only torch and numpy, which pip leaves as they are).
# And users' models from torchvision: 0.28.0 is the release paired with torch 2.13.0, installed
# with --no-deps so pip never replaces the torch in $(VENV); its registry wheel is CUDA-linked,
# and tests/torchvision_stub.py explains how this environment imports its model definitions
# anyway (an import hook it installs into $(VENV), so the examples and the CLI run as they are).
# timm (the timm extra) the same way, --no-deps: it needs only torch, torchvision and pyyaml
# (which lightning brings) to build its models; the hub client is optional to it.
# The library itself never needs torchvision. The Lightning callback's tests need the lightning
# extra (its torch>=2.1 requirement is met by the torch in $(VENV), which pip keeps).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev,peers]"
	$(PY) -m pip install -q -e ".[lightning]"
	$(PY) -m pip install -q --no-deps "torchvision==0.28.0"
	$(PY) -m pip install -q --no-deps "timm==1.0.31"
	$(PY) tests/torchvision_stub.py --install
	@touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/leantrain demo

# One pytest worker per core (pytest-xdist): every test runs torch single-threaded (conftest.py),
# so the suite's time falls about in proportion to the cores; `pytest` alone runs it serially.
test: $(VENV)/.installed-test
	$(PY) -m pytest -n auto

# The reviewer's benchmark (≤ 20 min on 2 CPU cores; data sets under $$LEANTRAIN_DATA), then the
# generated report: BENCHMARKS.md and the README's results block, from the committed results.
bench-quick: $(VENV)/.installed
	$(VENV)/bin/leantrain bench quick

report: $(VENV)/.installed
	$(VENV)/bin/leantrain report benchmarks/results --out benchmarks/report \
		--write-benchmarks BENCHMARKS.md --readme README.md --compile-rows benchmarks/step-cost

clean:
	rm -rf $(VENV) runs .pytest_cache
