#!/usr/bin/env bash
# Re-resolve the digest of every image pinned as name:tag@sha256:... in Dockerfile (the default of ARG
# BASE_IMAGE) and docker-compose.yml
# (docs/deploy.md). Needs registry access and `crane` or `docker buildx`.
#   deploy/update-digests.sh           rewrite the pins whose tag now points elsewhere
#   deploy/update-digests.sh --check   only report; exit 1 if a pin differs from its tag
# To move to a new tag, edit the tag first (keep any old @sha256:...), then run this.
set -euo pipefail
cd "$(dirname "$0")/.."
files=(Dockerfile docker-compose.yml)
check=0
[[ "${1:-}" == "--check" ]] && check=1

resolve() {  # name:tag -> sha256:<digest of the manifest list / index>
    if command -v crane >/dev/null 2>&1; then
        crane digest "$1"
    else
        docker buildx imagetools inspect "$1" --format '{{.Manifest.Digest}}'
    fi
}

differs=0
for ref in $(grep -ohE '[a-z0-9][a-z0-9./_-]*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}' "${files[@]}" | sort -u); do
    image=${ref%@*}
    old=${ref#*@}
    new=$(resolve "$image")
    if [[ "$new" == "$old" ]]; then
        echo "ok      $image@$old"
        continue
    fi
    differs=1
    echo "changed $image: $old -> $new"
    if ((!check)); then
        sed -i "s|$image@$old|$image@$new|g" "${files[@]}"
    fi
done
if ((check)); then exit "$differs"; fi
