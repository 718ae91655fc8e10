#!/bin/sh
# Whether CI runs the container tests (`make image-test`): yes when the image's inputs changed since the
# last landed commit, i.e. between BASE and HEAD, where BASE is CI_SINCE when set (the main a stop
# started from, when it lands several merges) and otherwise HEAD~1, main's previous commit (its first
# parent: for a merge, everything the merged branch brought). Without BASE in the history (a shallow
# clone, the first commit) they run. docs/deploy.md "Where the container tests run".
# Prints the reason; exit status 0: run them, 1: skip them.
set -u
cd "$(dirname "$0")/.."
base=${CI_SINCE:-HEAD~1}
inputs="Dockerfile docker-compose.yml deploy requirements pyproject.toml"
if ! git rev-parse --verify --quiet "$base^{commit}" >/dev/null; then
    echo "container tests: run ($base is not in this clone's history)"
    exit 0
fi
# shellcheck disable=SC2086 # the inputs are pathspecs, one word each
changed=$(git diff --name-only "$base" HEAD -- $inputs)
if [ -n "$changed" ]; then
    echo "container tests: run (changed since $base: $(echo "$changed" | paste -sd ' '))"
    exit 0
fi
echo "container tests: skipped (no change to $inputs since $base)"
exit 1
