#!/bin/sh
# Switch the detector of this compose site to another model in deploy/models, without downtime:
# POST /admin/model from inside the detector container (the proxy does not serve /admin/*), with the
# admin key from its secret. The old model serves until the new one is loaded and warmed up.
# Usage: deploy/switch-model.sh NAME SHA256      (NAME: the file name in deploy/models without .safetensors)
# Prints the answer (result, persisted, the model now served) as one JSON line; exit status 0 when switched or unchanged, 1 when refused (nothing
# changed: the answer says why), 2 on bad usage. Step by step: docs/operations.md "A model update".
# XSCREEN_COMPOSE names the compose command (default `docker compose`), e.g. for podman-compose with
# the stand-in override: XSCREEN_COMPOSE="podman-compose -f docker-compose.yml -f deploy/compose.standins.yml"
set -eu
if [ $# -ne 2 ]; then
    echo "usage: deploy/switch-model.sh NAME SHA256" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086  # the command is words: split on purpose
exec ${XSCREEN_COMPOSE:-docker compose} exec -T detector python - "$1" "$2" <<'PY'
import json, os, sys, urllib.error, urllib.request

path = os.environ.get("XSCREEN_ADMIN_KEYS_FILE", "/run/secrets/xscreen_admin_keys")
with open(path, encoding="utf-8") as f:
    key = next(line.strip() for line in f if line.strip() and not line.lstrip().startswith("#"))
request = urllib.request.Request(
    "http://127.0.0.1:%s/admin/model" % os.environ.get("XSCREEN_PORT", "8000"),
    data=json.dumps({"name": sys.argv[1], "sha256": sys.argv[2]}).encode(),
    headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
    method="POST",
)
try:
    with urllib.request.urlopen(request, timeout=600) as answer:
        body = json.load(answer)
    model = body["model"]
    print(json.dumps({"result": body["result"], "persisted": body["persisted"],
                      "previous_sha256": body["previous_sha256"], "model_name": model["model_name"],
                      "version": model["version"], "sha256": model["sha256"]}))
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
    sys.exit(1)
PY
