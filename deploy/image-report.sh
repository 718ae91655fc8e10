#!/usr/bin/env bash
# Where the size of an xscreen image goes: its total size, the size of each layer (newest first) and the
# biggest folders of its Python environment, measured inside the image.
#   deploy/image-report.sh [IMAGE]        default localhost/xscreen:dev; ENGINE=docker to use docker
# tests/deploy/test_image.py runs it on the image it builds; docs/deploy.md quotes its output.
set -euo pipefail
image=${1:-localhost/xscreen:dev}
engine=${ENGINE:-podman}
site=/opt/venv/lib/python3.11/site-packages

bytes=$("$engine" image inspect --format '{{.Size}}' "$image")
echo "image $image: $(awk -v b="$bytes" 'BEGIN { printf "%.2f GB (%d bytes)", b / 1e9, b }')"
echo
echo "layers, newest first (size, instruction):"
# a RUN after an ARG reads "|1 NAME=value /bin/sh -c ...": the build arguments are cut, as is the shell
"$engine" history --no-trunc --format '{{.Size}}	{{.CreatedBy}}' "$image" \
    | awk -F'\t' '{ sub(/^\|[0-9]+ ([A-Za-z_]+=[^ ]* )*/, "", $2); sub(/^\/bin\/sh -c (#\(nop\) *)?/, "", $2)
                    printf "  %10s  %.90s\n", $1, $2 }'
echo
echo "inside the image, MB (du -sm):"
# one sh in the image: the environment, the base (Debian + Python), then site-packages' biggest entries
"$engine" run --rm --no-healthcheck --user 0 --entrypoint sh "$image" -c "
    du -sm /opt/venv /usr | awk '{ printf \"  %6d  %s\n\", \$1, \$2 }'
    echo '  of which in $site:'
    du -sm $site/* | sort -rn | head -n 12 | awk '{ sub(\".*/\", \"\", \$2); printf \"  %6d    %s\n\", \$1, \$2 }'
    du -smc $site/nvidia* $site/cuda* 2>/dev/null | tail -n 1 \
        | awk '{ printf \"  %6d    (nvidia-* and cuda-* wheels together: the CUDA runtime, cuBLAS, cuDNN, ...)\n\", \$1 }'
"
