#!/usr/bin/env bash
# One prepared check for a lent GPU machine (the `device` tool, /work/.library/device/README.md).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine: results under $OUT, about 8 minutes
#   bash benchmarks/gpu_check.sh --dry-run  # the same steps on CPU at toy size (tests/deploy/test_gpu_check.py)
#
# Budget (GPU): about 8 minutes; give the device call timeout_s 600. TRAIN_SECONDS (default 100) and
# TRAIN_EPOCHS (4) size the training. Steps, each time-boxed, each logged even when it fails (the script goes on; summary.md says which
# failed): environment; the CUDA tests (pytest -m cuda); the latency table (benchmarks/model_latency.py:
# ATSS, LAcls incl. any *lacls*release* config, LAreg, torchvision FCOS; fp32/bf16; batch 1/8; R-50 at
# 800x1333); ONNX Runtime's CUDA provider vs torch (benchmarks/onnx_cuda_parity.py); service_load.py
# against a server on CUDA; a time-boxed training of the demo model (the bundled weights' recipe,
# small_lacls_release_demo at 320 px, fine-tuned from the bundled weights with --init-weights) on fresh
# 640x640 `xscreen synth` scans, its threshold picked on val (best F2, as bundled), evaluated on test and
# through POST /detect (benchmarks/detect_ap.py, seed 7, 40 scans of 640x640) beside the bundled file.
#
# What comes back: the device tool returns at most 8 files of 16 MiB, 2 folders deep, so $OUT holds
# summary.md (all tables), results.tar.gz (logs, metrics, curves, PR plots) and the trained weights
# (fp16) cut into <= 15 MiB parts: weights.safetensors.part-aa, -ab (`cat part-* > W` joins them).
#
# Packages the GPU image lacks (KINDS.md: no fastapi, uvicorn, pydantic-settings, python-multipart,
# pycocotools; its onnxruntime is the CPU build) travel as wheels. Once, here, in the repo root:
#     echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
#     bash benchmarks/gpu_check.sh --fetch-wheels      # pip download into .whl/ (cp312, manylinux)
# then call the device tool with carry [".whl"] and command `bash benchmarks/gpu_check.sh`; the script
# installs .whl/*.whl into /tmp/site itself. onnxruntime-gpu (~250 MB) is over the 64 MiB carry limit,
# so the ONNX CUDA step reports the provider as missing unless the image gains it.
# No `xscreen` console script exists there: the script puts a shim beside python (root) when missing.
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS="fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv annotated-types
typing-inspection python-multipart uvicorn pycocotools"
if [ "${1:-}" = "--fetch-wheels" ]; then
    PIP=${PIP:-python3 -m pip}
    for w in $WHEELS; do
        $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$w" || echo "could not fetch $w" >&2
    done
    ls -la .whl
    exit 0
fi

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$PWD/gpu_check_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
RES="$WORK/results"
mkdir -p "$RES"
SUMMARY="$OUT/summary.md"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
PYBIN=$("$PY" -c 'import sys, pathlib; print(pathlib.Path(sys.executable).parent)')
if [ ! -x "$PYBIN/xscreen" ]; then
    printf '#!/bin/sh\nexec "%s" -m xscreen.cli "$@"\n' "$("$PY" -c 'import sys; print(sys.executable)')" \
        > "$PYBIN/xscreen" 2>/dev/null && chmod +x "$PYBIN/xscreen" || echo "no xscreen command and cannot add one" >&2
fi
XS="$PYBIN/xscreen"

if [ $DRY = 1 ]; then
    DEV=cpu; SIZE=32x32; MODELS_R=small; RUNS=3; BATCHES="1 2"; TRAIN_S=120; SYNTH_N=4; SCAN=128; SPLITS=0.5,0.25,0.25
    AP_N=3; AP_SIZE=128x128; LOAD_ARGS="--requests 2 --concurrency 1 --size 128 --scans 1 --formats png --model-runs 1"
    TRAIN_ARGS="--epochs 1 --batch-size 2 --workers 0"; ONNX_ARGS="--config small_lacls --size 128x128 --device cpu --runs 1"
else
    DEV=cuda; SIZE=800x1333; MODELS_R=r50; RUNS=3; BATCHES="1 8"; TRAIN_S=${TRAIN_SECONDS:-100}; SYNTH_N=3000; SCAN=640; SPLITS=0.9,0.05,0.05
    AP_N=40; AP_SIZE=640x640; LOAD_ARGS="--requests 40 --concurrency 1,8 --size 640 --formats png --device cuda"
    TRAIN_ARGS="--epochs ${TRAIN_EPOCHS:-4} --eval-every 2 --batch-size 16 --workers 8"; ONNX_ARGS="--device cuda"
fi

echo "# gpu_check $(date -u +%FT%TZ) dry_run=$DRY device=$DEV" > "$SUMMARY"
FAILED=""
step() {  # step NAME SECONDS CMD... : run with a time limit, log to results/NAME.log, table into summary
    local name=$1 secs=$2; shift 2
    local t0=$SECONDS
    timeout --signal=TERM --kill-after=15 "$secs" "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    printf '\n## %s (exit %s, %ss)\n\n' "$name" "$rc" "$((SECONDS - t0))" >> "$SUMMARY"
    grep -v '^# run ' "$RES/$name.log" | tail -n 60 >> "$SUMMARY"
    [ $rc = 0 ] || FAILED="$FAILED $name"
    return 0
}

step env 30 bash -c "nvidia-smi || true; $PY -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.cuda.is_available())';
    $PY -c 'import onnxruntime as o; print(\"onnxruntime\", o.__version__, o.get_available_providers())'"

CUDA_FILES=$(grep -rl 'mark.cuda' tests --include='test_*.py' | tr '\n' ' ')
step cuda_tests 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider $CUDA_FILES

R50=$(cd model/configs && ls *.json | sed 's/\.json$//' | grep "$( [ $MODELS_R = r50 ] && echo _r50 || echo '^small_')")
# the dry run times two of them (ATSS and the paper-text LAcls) and FCOS: the same steps, less to build and run
MODELS=$(for m in $R50; do echo "$m"; done | grep -E 'atss|lacls|lareg' | sort | head -n "$([ $DRY = 1 ] && echo 2 || echo 99)" \
    | tr '\n' ',')fcos
for dtype in fp32 bf16; do
    for b in $BATCHES; do
        mem=--no-memory; [ "$dtype$b" = fp321 ] && [ $DRY = 0 ] && mem=""
        step "latency_${dtype}_b$b" 90 "$PY" benchmarks/model_latency.py --size $SIZE --runs $RUNS \
            --device $DEV --batch "$b" --dtype $dtype --models "$MODELS" $mem
    done
done

step onnx_cuda 120 "$PY" benchmarks/onnx_cuda_parity.py $ONNX_ARGS

# the demo model: fresh synthetic scans, a time-boxed run, its threshold, test metrics, AP through /detect
DATA="$WORK/data"
BUNDLED=model/weights/xscreen-small-lacls.safetensors
step synth 90 "$XS" synth --out "$DATA" --images $SYNTH_N --size ${SCAN}x$SCAN --seed 2022 \
    --splits $SPLITS --workers "$(nproc)" --fast-png --no-progress
# the bundled recipe (make demo-model's stage 2); the dry run only shrinks the input
"$PY" -c "from xscreen.model import load_config; import sys
c = load_config('small_lacls_release_demo')
c = c.with_overrides(min_size=$SCAN // 2, max_size=$SCAN // 2) if $DRY else c
open(sys.argv[1], 'w').write(c.to_json())" "$WORK/demo.json"
step train $((TRAIN_S + 30)) timeout --signal=TERM "$TRAIN_S" "$XS" train --config "$WORK/demo.json" \
    --data "$DATA" --out "$RES/train" --device $DEV $TRAIN_ARGS --no-progress --init-weights "$BUNDLED" \
    --lr 0.02 --clip-grad 35 --threshold-rule best-f2
W="$RES/train/best.safetensors"; [ -f "$W" ] || W="$RES/train/last.safetensors"
if [ -f "$W" ]; then
    step threshold 90 "$XS" threshold "$W" --data "$DATA" --split val --out "$WORK/demo.safetensors" \
        --rule best-f2 --plot "$RES/operating_point.png" --device $DEV
    step eval_test 90 "$XS" eval --weights "$WORK/demo.safetensors" --data "$DATA" --split test \
        --device $DEV --out "$RES/eval_test"
    step detect_ap 150 "$PY" benchmarks/detect_ap.py --weights "$WORK/demo.safetensors" --seed 7 \
        --images $AP_N --size $AP_SIZE --device $DEV --json "$RES/detect_ap.json"
    step detect_ap_bundled 150 "$PY" benchmarks/detect_ap.py --weights "$BUNDLED" --seed 7 \
        --images $AP_N --size $AP_SIZE --device $DEV --json "$RES/detect_ap_bundled.json"
    step service_load 120 "$PY" benchmarks/service_load.py --weights "$WORK/demo.safetensors" $LOAD_ARGS
    "$PY" -c "import sys; from xscreen.model import load_weights, save_weights
m, i = load_weights(sys.argv[1]); save_weights(m, sys.argv[2], half=True, metadata=i.metadata,
    operating_point=i.operating_point)" "$WORK/demo.safetensors" "$WORK/weights.safetensors" \
        && split -b 15m "$WORK/weights.safetensors" "$OUT/weights.safetensors.part-"
else
    FAILED="$FAILED no_weights"
fi

rm -rf "$RES/train/tensorboard" "$RES/train/train_state.safetensors" "$RES/train/"*.safetensors
tar -czf "$OUT/results.tar.gz" -C "$WORK" results
printf '\n## failed steps:%s\n' "${FAILED:- none}" >> "$SUMMARY"
rm -rf "$WORK"
echo "gpu_check done; failed:${FAILED:- none}; see $SUMMARY"
[ -z "$FAILED" ]
