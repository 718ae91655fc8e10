# xscreen inference service: CUDA runtime, the pinned torch, bundled demo weights, non-root.
# Build: docker build -t xscreen:0.1.0 .   Run: see docker-compose.yml and docs/service.md.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Ubuntu 24.04 ships Python 3.12 (the project needs >= 3.11); libglib2.0 is what opencv-headless links.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libglib2.0-0t64 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first (cached layer): the pinned torch/torchvision from pyproject.toml.
COPY pyproject.toml README.md ./
RUN pip install "torch==2.14.1" "torchvision==0.29.1"
COPY xscreen ./xscreen
COPY model ./model
COPY training ./training
COPY service ./service
# Non-editable install: the bundled weights land in site-packages/model/weights (package data),
# which is where the service's default XSCREEN_WEIGHTS points.
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin xscreen

USER 10001
ENV XSCREEN_HOST=0.0.0.0 \
    XSCREEN_PORT=8000 \
    XSCREEN_DEVICE=auto
EXPOSE 8000
# Ready = weights loaded and a warm-up inference done (GET /readyz answers 200).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('XSCREEN_PORT', '8000'), timeout=4)"]
# Listening on 0.0.0.0 needs API keys: pass XSCREEN_API_KEYS_FILE (compose uses a secret).
STOPSIGNAL SIGTERM
CMD ["xscreen", "serve"]
