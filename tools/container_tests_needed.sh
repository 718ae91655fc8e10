#!/bin/sh
# Whether CI runs the container tests (`make image-test`, `make site-test`): yes unless the image's
# inputs hash to the value recorded in .ci/container-inputs.sha256, the inputs the container tests last
# passed on. docs/deploy.md "Where the container tests run".
#
#   tools/container_tests_needed.sh           prints the reason; exit status 0: run them, 1: skip them
#   tools/container_tests_needed.sh --record  writes the current hash to the record (after they passed)
#
# The hash: sha256 over one line "<sha256 of the file's content> <path>" per file under the inputs, in
# byte order of the paths; the files are the tracked ones plus untracked ones git does not ignore (so a
# record written before `git add` matches the commit), read from the working tree (in CI, HEAD's).
# The record lies outside the inputs, so writing it does not change the hash.
set -u
cd "$(dirname "$0")/.."
inputs="Dockerfile docker-compose.yml deploy requirements pyproject.toml"
record=.ci/container-inputs.sha256

inputs_hash() {
    # shellcheck disable=SC2086 # the inputs are pathspecs, one word each
    files=$(git -c core.quotePath=false ls-files --cached --others --exclude-standard -- $inputs) || return 1
    printf '%s\n' "$files" | LC_ALL=C sort -u | while IFS= read -r path; do
        # a tracked file deleted in the working tree is left out, as in the commit that deletes it
        [ -n "$path" ] && [ -f "$path" ] || continue
        sum=$(sha256sum <"$path")
        printf '%s %s\n' "${sum%% *}" "$path"
    done | sha256sum | cut -d ' ' -f 1
}

case "${1:-}" in
"") ;;
--record)
    current=$(inputs_hash) || { echo "container tests: cannot hash the inputs ($inputs)" >&2; exit 2; }
    { mkdir -p "$(dirname "$record")" && printf '%s\n' "$current" >"$record"; } || exit 2
    echo "container tests: recorded inputs hash $current in $record (commit it)"
    exit 0
    ;;
*)
    echo "usage: $0 [--record]" >&2
    exit 2
    ;;
esac

if ! current=$(inputs_hash) || [ -z "$current" ]; then
    echo "container tests: run (the inputs cannot be hashed here: not a git checkout?)"
    exit 0
fi
if [ ! -f "$record" ]; then
    echo "container tests: run (no record in $record; inputs hash $current)"
    exit 0
fi
recorded=$(head -n 1 "$record")
if [ "$recorded" != "$current" ]; then
    echo "container tests: run (inputs hash $current differs from $recorded recorded in $record)"
    exit 0
fi
echo "container tests: skipped (inputs as verified at $current)"
exit 1
