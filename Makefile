# `make demo` sets everything up and runs the main job on the built-in catalog; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/jigsaw: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/jigsaw
	$(BIN)/jigsaw solve --app social_media,traffic_analysis,ar_assistant --rps 500,100,200 --gpus 4
	$(BIN)/jigsaw capacity --gpus 120

test: $(BIN)/jigsaw
	$(BIN)/python -m pytest -q

lint: $(BIN)/jigsaw
	$(BIN)/ruff check .

bench: $(BIN)/jigsaw
	$(BIN)/python scripts/bench_ilp.py

clean:
	rm -rf $(VENV) build *.egg-info
