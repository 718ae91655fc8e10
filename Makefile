# xscreen developer entry points. Every target creates/uses ./.venv.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint clean lock image-test container-record

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

# lint-imports runs on build/lint-imports, the packages laid out as the wheel has them: grimp reads a
# package's folder, and xscreen.model, .training and .service live in model/, training/ and service/.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/lint_imports.py

# The whole suite on WORKERS pytest-xdist workers, each test module on one worker (tests/conftest.py);
# WORKERS=0 runs it in this process, one test after another.
WORKERS ?= 2
PYTEST = $(BIN)/python -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/lint_imports.py
	$(PYTEST) --durations=15

# The edit loop: the suite less the tests marked slow (each over ~20 s on 2 cores)
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" --durations=10

clean:
	rm -rf $(VENV) build *.egg-info

# The image, built from the Dockerfile with podman on the local stand-in base and run: ready time, the
# venv's detections, keys, uid, a fresh state volume, draining, pip check, the weights once, the size
# report (docs/deploy.md "The image, tested"). Once per machine first: bash ../shared/tools/podman-here.sh
image-test: $(STAMP)
	XSCREEN_CONTAINER_TESTS=1 $(BIN)/python -m pytest -q -s -m container tests/deploy/test_image.py

# After `make image-test site-test` passed: record the image's inputs as verified
# (.ci/container-inputs.sha256, committed), so CI skips the container tests until they change again.
container-record:
	tools/container_tests_needed.sh --record

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

# The bundled demo weights (model/weights/MODEL_CARD.md), in two stages on one synthetic set (made once):
#   stage 1: 5 epochs from scratch -> $(DEMO)/stage1.safetensors (fp16; these are the 0.3.0 weights);
#   stage 2: 1 more epoch from stage 1 (train --init-weights) at a quarter of stage 1's lr, with a
#   schedule of its own (warm-up, x0.1 at 2/3 and 11/12) -> the 0.4.0 weights,
# then the fp16 copy with its operating threshold picked on the set's val split (best F2: a missed threat
# costs more than a false alarm). Each stage is resumable: after an interruption run `make demo-model`
# again and it continues from the stage's last checkpoint with --resume. A stage whose output exists is
# skipped; to skip stage 1, put the 0.3.0 weights at $(DEMO)/stage1.safetensors
# (git show 2d8ae3f:model/weights/xscreen-small-lacls.safetensors > runs/demo/stage1.safetensors).
# About 2 h + 50 min on 2 CPU cores; DEMO_TRAIN_ARGS="--device cuda" on a GPU.
DEMO ?= runs/demo
DEMO_SYNTH_ARGS ?= --images 5000 --size 640x640
DEMO_TRAIN_ARGS ?= --device auto --workers 1
DEMO_STAGE1_ARGS ?= --epochs 5 --lr 0.02 --seed 0
DEMO_STAGE2_ARGS ?= --epochs 1 --lr 0.005 --seed 1
DEMO_VERSION ?= 0.4.0
DEMO_TRAIN = $(BIN)/xscreen train --config small_lacls_release_demo --data $(DEMO)/data --batch-size 4 \
	--clip-grad 35 --eval-every 1 --log-every 20 --no-progress $(DEMO_TRAIN_ARGS)

.PHONY: demo-model
demo-model: $(STAMP)
	test -f $(DEMO)/data/annotations/train.json || $(BIN)/xscreen synth --out $(DEMO)/data \
		--seed 2100 --splits 0.96,0.04,0 --workers 2 --fast-png --no-progress $(DEMO_SYNTH_ARGS)
	test -f $(DEMO)/stage1.safetensors || { $(DEMO_TRAIN) --out $(DEMO)/run $(DEMO_STAGE1_ARGS) \
		$$(test -f $(DEMO)/run/train_state.safetensors && echo --resume) && \
		$(BIN)/xscreen release $(DEMO)/run/last.safetensors --out $(DEMO)/stage1.safetensors --version 0.3.0; }
	$(DEMO_TRAIN) --out $(DEMO)/finetune $(DEMO_STAGE2_ARGS) $$(test -f $(DEMO)/finetune/train_state.safetensors \
		&& echo --resume || echo --init-weights $(DEMO)/stage1.safetensors)
	$(BIN)/xscreen release $(DEMO)/finetune/last.safetensors --out $(DEMO)/xscreen-small-lacls.safetensors \
		--version $(DEMO_VERSION)
	$(BIN)/xscreen threshold $(DEMO)/xscreen-small-lacls.safetensors --data $(DEMO)/data --split val \
		--rule best-f2 --out $(DEMO)/xscreen-small-lacls.safetensors --plot $(DEMO)/operating_point.png
	@echo "demo weights: $(DEMO)/xscreen-small-lacls.safetensors (copy over model/weights/ to bundle them)"

# The site stack brought up with podman (docs/deploy.md "The stack, tried with podman"): docker-compose.yml
# through podman-compose with deploy/compose.standins.yml, Caddy, Prometheus and Alertmanager stood in for
# by Debian bookworm's packages on the local base (bash ../shared/tools/podman-here.sh makes it), the
# detector from the Dockerfile. podman-compose is GPL-2.0: installed as a separate tool under build/tools,
# never into the project's environment or its locks (as .ci/run installs caddy and promtool with apt).
# Skipped by plain `make test`; about 10 min here, 4 of them waiting for the "detector down" alert.
PODMAN_COMPOSE := build/tools/podman-compose
SITE_BASE_IMAGE ?= localhost/python:3.11-slim-bookworm
DETECTOR_IMAGE ?= localhost/xscreen:dev
.PHONY: podman-compose site-images site-test
podman-compose: $(PODMAN_COMPOSE)/bin/podman-compose
$(PODMAN_COMPOSE)/bin/podman-compose: $(STAMP)
	$(BIN)/python -m pip install --quiet --target $(PODMAN_COMPOSE) podman-compose==1.6.0

site-images:
	for s in caddy prometheus alertmanager; do \
		podman build --network host --build-arg BASE_IMAGE=$(SITE_BASE_IMAGE) -f deploy/standins/$$s.Containerfile \
			-t localhost/xscreen-standin-$$s:bookworm deploy/standins || exit 1; done
	podman image exists $(DETECTOR_IMAGE) || podman build --network host \
		--build-arg BASE_IMAGE=$(SITE_BASE_IMAGE) -t $(DETECTOR_IMAGE) .

site-test: $(STAMP) podman-compose site-images
	XSCREEN_CONTAINER_TESTS=1 XSCREEN_DETECTOR_IMAGE=$(DETECTOR_IMAGE) $(BIN)/python -m pytest -q -s \
		-m container tests/deploy/test_site.py
