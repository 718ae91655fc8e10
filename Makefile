# xscreen developer entry points. Every target creates/uses ./.venv.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint clean lock

# The dev tools and every extra, installed from the hashed lock (what CI runs), then xscreen itself
# without dependencies. The lock is for Python 3.11 on Linux x86_64; elsewhere resolve from
# pyproject.toml instead: make test CI_LOCK=
CI_LOCK ?= requirements/ci.txt
$(STAMP): pyproject.toml $(CI_LOCK)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifeq ($(strip $(CI_LOCK)),)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
else
	$(BIN)/python -m pip install --quiet --require-hashes -r $(CI_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
endif
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

# Re-resolve the hashed locks from pyproject.toml (docs/deploy.md): requirements/service.txt is the image
# (base + gpu), requirements/ci.txt is `make test` (dev, which includes gpu and train). Existing pins are
# kept unless a pyproject change needs another version; move everything to the newest with
#   make lock LOCK_ARGS=--upgrade      (or one package: LOCK_ARGS="--upgrade-package fastapi")
LOCK_ARGS ?=
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes \
	--index-url https://pypi.org/simple --custom-compile-command "make lock" --quiet $(LOCK_ARGS)
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra gpu $(LOCK_FLAGS) -o requirements/service.txt
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements/ci.txt

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
