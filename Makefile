# `make demo` sets everything up and evaluates the shipped policy against the ILP and the baselines on the built-in
# catalog; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/jigsaw: pyproject.toml
	@echo "installing jigsaw and its dependencies into $(VENV) (torch among them: minutes on a first install)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/jigsaw  # the first 10 intervals of each held-out trace: the whole of them takes ~17 min on 2 cores
	$(BIN)/jigsaw evaluate --policy agents/policies/default.npz --intervals 10 --logdir runs/demo

test: $(BIN)/jigsaw
	$(BIN)/python -m pytest -q

lint: $(BIN)/jigsaw
	$(BIN)/ruff check .

bench: $(BIN)/jigsaw
	for b in ilp perf sim env decide shim; do $(BIN)/python scripts/bench_$$b.py || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
