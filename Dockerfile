# xscreen inference service: slim Python, the hashed lock (torch with its own CUDA wheels, onnxruntime-gpu),
# bundled demo weights, non-root. Build: docker build -t xscreen:0.1.0 .   Run: docker-compose.yml, deploy/k8s/.
# Why a slim Python base is enough on a GPU, and how to update the digest: docs/deploy.md.
# python:3.11.14-slim-bookworm, multi-arch index digest (deploy/update-digests.sh re-resolves it). A stand-in
# base swaps in without editing this file: --build-arg BASE_IMAGE=localhost/python:3.11-slim-bookworm.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d
FROM ${BASE_IMAGE} AS deps

# The host's driver (libcuda) is mounted by the NVIDIA container runtime, which reads these; the CUDA
# runtime, cuBLAS and cuDNN come from the nvidia-* wheels in the lock.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app
# Layer 1, rebuilt only when the lock changes: every dependency, hash-checked (torch==2.14.1,
# torchvision==0.29.1 and the rest; requirements/service.txt = base + gpu extra, `make lock`). The wheels
# are downloaded into a build cache mount, outside every layer, and installed from there: pip download
# skips a wheel already there with the lock's hash, so a lock change downloads only what moved.
COPY requirements/service.txt requirements/service.txt
RUN --mount=type=cache,target=/root/.cache/xscreen-wheels,sharing=locked \
    python -m venv /opt/venv \
    && pip download --only-binary :all: --require-hashes --no-deps -r requirements/service.txt \
        --dest /root/.cache/xscreen-wheels \
    && pip install --no-index --find-links /root/.cache/xscreen-wheels --require-hashes --no-deps \
        -r requirements/service.txt \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin xscreen

# The wheel, in a stage of its own: the sources and setuptools' build/ stay here. package-dir in
# pyproject.toml maps model/, training/ and service/ to xscreen.model, xscreen.training and
# xscreen.service. Built with the lock's setuptools (no build isolation: nothing is fetched outside the lock).
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY xscreen ./xscreen
COPY model ./model
COPY training ./training
COPY service ./service
ARG XSCREEN_SOURCE_DIGEST=
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM deps
# Layer 2, rebuilt on any code change: the project alone, installed from the wheel stage through a
# bind mount, so no layer keeps the wheel or the sources. The bundled weights land once, in
# site-packages/xscreen/model/weights (package data), where the default XSCREEN_WEIGHTS points.
# Docker's BuildKit keys this layer's cache on the mounted wheel. Podman/buildah before the fix of
# containers/buildah#6609 does not: after a code change it reuses the layer with the old code. There
# a digest of the sources as XSCREEN_SOURCE_DIGEST (declared in both stages) rebuilds the wheel stage
# and this layer together (tests/deploy/test_image.py; docs/deploy.md, "The image, tested").
ARG XSCREEN_SOURCE_DIGEST=
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps /wheels/xscreen-*.whl

# The mount point of the detector's state volume (compose: detector-state), owned by the service user: a
# new named volume copies this owner, so uid 10001 can write the model selection and the audit trail.
RUN mkdir -p /var/lib/xscreen/audit && chown -R 10001 /var/lib/xscreen

USER 10001
ENV XSCREEN_HOST=0.0.0.0 \
    XSCREEN_PORT=8000 \
    XSCREEN_DEVICE=auto
EXPOSE 8000
# Ready = weights loaded and a warm-up inference done (GET /readyz answers 200).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('XSCREEN_PORT', '8000'), timeout=4)"]
# Listening on 0.0.0.0 needs API keys: pass XSCREEN_API_KEYS_FILE (compose and k8s use a secret).
STOPSIGNAL SIGTERM
CMD ["xscreen", "serve"]
