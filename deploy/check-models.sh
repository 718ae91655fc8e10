#!/bin/sh
# Check the models folder docker-compose.yml mounts read-only at /models, before `docker compose up` and
# before a switch: the folder listable by the detector's uid (10001), every model file in it (.safetensors,
# .onnx) readable by that uid, and the model compose names (XSCREEN_MODEL_NAME) present. One line per
# problem. A file the detector cannot read stops it at start, or fails a switch, with "permission denied".
# Usage: deploy/check-models.sh [MODELS_DIR]     (default: deploy/models next to this script)
# Exit status 0 when all is well, 1 otherwise. How to fill the folder: deploy/models/README.md.
set -u

here=$(dirname "$0")
dir=${1:-$here/models}
uid=10001
problems=0
say() { printf '%s\n' "$*" >&2; problems=$((problems + 1)); }

allowed_by() {  # path uid bits(4 = read, 5 = read + search) -> 0 if that uid has the bits (owner or others)
    owner=$(stat -c %u "$1") mode=$(stat -c %a "$1")
    others=$((0$mode % 8)) user=$((0$mode / 64 % 8))
    [ $((others & $3)) -eq "$3" ] && return 0
    [ "$owner" -eq "$2" ] && [ $((user & $3)) -eq "$3" ] && return 0
    return 1
}

if [ ! -d "$dir" ]; then
    echo "check-models: $dir is not a folder (compose mounts it at /models): create it as deploy/models/README.md says" >&2
    exit 1
fi
allowed_by "$dir" "$uid" 5 || say "$dir: not listable by uid $uid (the detector): sudo chmod 0755 $dir"

count=0
for path in "$dir"/*.safetensors "$dir"/*.onnx; do
    [ -e "$path" ] || continue
    count=$((count + 1))
    if [ ! -f "$path" ]; then
        say "$path: not a regular file"
    elif ! allowed_by "$path" "$uid" 4; then
        say "$path: not readable by uid $uid (the detector; owner uid $(stat -c %u "$path"), mode $(stat -c %a "$path")): sudo chmod 0444 $path"
    fi
done

compose=$here/../docker-compose.yml
name=$(sed -n 's/^ *XSCREEN_MODEL_NAME: *"\{0,1\}\([A-Za-z0-9._-]*\)"\{0,1\} *$/\1/p' "$compose" 2>/dev/null | head -n 1)
if [ -n "$name" ] && [ ! -e "$dir/$name.safetensors" ] && [ ! -e "$dir/$name.onnx" ]; then
    say "$dir/$name.safetensors: missing: docker-compose.yml serves XSCREEN_MODEL_NAME=$name (copy it in as deploy/models/README.md says)"
fi

if [ "$problems" -ne 0 ]; then
    echo "check-models: $problems problem(s) in $dir; the detector would not start or not switch" >&2
    exit 1
fi
echo "check-models: $count model file(s) in $dir, all readable by uid $uid (the detector)"
