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

demo: $(VENV)/.installed
	$(VENV)/bin/leantrain demo

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
