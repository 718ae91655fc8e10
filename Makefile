# xscreen developer entry points. Every target creates/uses ./.venv.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf $(VENV) build *.egg-info

# The LA experiment (docs/la_experiment.md): ATSS vs ATSS+LAcls on a synthetic overlap-heavy set,
# 3 seeds, mean +/- std tables. Full size by default; shrink with e.g.
#   make la-experiment LA_ARGS="--train-images 300 --epochs 4 --batch-size 4"
LA_ARGS ?=
.PHONY: la-experiment
la-experiment: $(STAMP)
	$(BIN)/xscreen la-experiment $(LA_ARGS)

# The inference service on the bundled weights (docs/service.md); XSCREEN_* variables configure it.
.PHONY: run
run: $(STAMP)
	$(BIN)/xscreen serve
