#!/usr/bin/env bash
# The GPU check, in one go on a CUDA machine, from the project root:
#
#   bash tools/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ./gpu_check (or $OUT)
#
# Steps (STEPS, default "ops tests bench demo"), each logged to OUT_DIR:
#   ops    mmcv 2.1.0 with its CUDA ops: kept when they import, else built from MMCV_SRC
#          (a source dir or .tar.gz, e.g. offline) or from PyPI's source release
#   tests  the test suite with MMPLUG_TEST_DEVICE=cuda (PYTEST_ARGS to narrow it)
#   bench  tools/analysis/benchmark_plugins.py on CUDA at batch BATCH (32), fp32 and bf16
#          autocast (BENCH_ARGS adds options, e.g. "--only SE CBAM")
#   demo   the demo twin of configs/faster_rcnn_r50_dcn_asff.py trained and tested on the GPU
#
# For a machine without the OpenMMLab packages and without network:
#   WHEELS=dir      pure-Python wheels (mmengine, mmdet, mmsegmentation, their deps) installed
#                   with --no-deps into a scratch folder on PYTHONPATH
#   SOURCES="a b"   source releases (.tar.gz or dirs) put on PYTHONPATH, e.g. the peers'
#                   (fightingcv-attention); MMCV_SRC is built in place and put there too
#   MAX_JOBS, TORCH_CUDA_ARCH_LIST   for the mmcv build (default: all cores, this GPU's arch)
# DEVICE=cpu runs the steps on the CPU with tiny settings: a dry run of this script.
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${1:-${OUT:-$ROOT/gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
STEPS=${STEPS:-ops tests bench demo}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-32}
SCRATCH=${SCRATCH:-$(mktemp -d)}
T0=$(date +%s)
log() { echo "[gpu_check t+$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.log"; }
has_step() { [[ " $STEPS " == *" $1 "* ]]; }
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

if [[ -n ${WHEELS:-} ]]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SCRATCH/site" \
        "$WHEELS"/*.whl || { log "installing $WHEELS failed"; exit 1; }
    PYTHONPATH=$SCRATCH/site:$PYTHONPATH
fi
unpack() {  # a .tar.gz or a dir -> a dir on this machine
    if [[ -d $1 ]]; then echo "$1"; return; fi
    mkdir -p "$SCRATCH/src" && tar xzf "$1" -C "$SCRATCH/src" \
        && echo "$SCRATCH/src/$(tar tzf "$1" | head -1 | cut -d/ -f1)"
}
for src in ${SOURCES:-}; do PYTHONPATH=$(unpack "$src"):$PYTHONPATH; done

"$PY" - <<EOF || { log "no usable $DEVICE device (DEVICE=cpu for a dry run)"; exit 2; }
import torch, sys
assert '$DEVICE' == 'cpu' or torch.cuda.is_available(), 'CUDA is not available'
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), Python {sys.version.split()[0]}',
      torch.cuda.get_device_name(0) if '$DEVICE' == 'cuda' else 'CPU dry run')
EOF
log "$("$PY" -c 'import torch, sys; print("torch", torch.__version__, "CUDA", torch.version.cuda, "Python", sys.version.split()[0])')"

mmcv_ops_ok() {
    "$PY" - <<EOF
import torch
from mmcv.ops import ModulatedDeformConv2dPack
layer = ModulatedDeformConv2dPack(4, 4, 3, padding=1).to('$DEVICE')
layer(torch.randn(1, 4, 5, 5, device='$DEVICE')).sum().backward()
EOF
}

if has_step ops; then
    if mmcv_ops_ok >/dev/null 2>&1; then
        log "ops: mmcv's ops run on $DEVICE already"
    else
        if [[ -n ${MMCV_SRC:-} ]]; then
            src=$(unpack "$MMCV_SRC")
        else
            "$PY" -m pip download -q --no-deps --no-binary :all: -d "$SCRATCH/dl" mmcv==2.1.0 \
                && src=$(unpack "$SCRATCH"/dl/mmcv-2.1.0.tar.gz)
        fi
        log "ops: building mmcv's CUDA ops in $src"
        arch=${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability()) if torch.cuda.is_available() else print("")')}
        (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=$([[ $DEVICE == cuda ]] && echo 1 || echo 0) \
            TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            "$PY" setup.py build_ext --inplace > "$OUT/mmcv_build.log" 2>&1)
        log "ops: build rc=$?"
        PYTHONPATH=$src:$PYTHONPATH
    fi
    mmcv_ops_ok > "$OUT/mmcv_ops.log" 2>&1 && log "ops: ok" \
        || { log "ops: mmcv's ops do not run on $DEVICE (see mmcv_build.log, mmcv_ops.log)"; exit 1; }
fi

if has_step tests; then
    MMPLUG_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} \
        > "$OUT/tests.log" 2>&1
    log "tests: rc=$? $(tail -1 "$OUT/tests.log")"
fi

if has_step bench; then
    smoke=(); [[ $DEVICE == cpu ]] && smoke=(--smoke)
    for dtype in fp32 bf16; do
        "$PY" tools/analysis/benchmark_plugins.py --device "$DEVICE" --batch "$BATCH" \
            --dtype $dtype --no-progress "${smoke[@]}" ${BENCH_ARGS:-} \
            --out "$OUT/bench_$dtype.md" --json "$OUT/bench_$dtype.json" > "$OUT/bench_$dtype.log" 2>&1
        rc=$?
        log "bench $dtype: rc=$rc ($(grep -c MISMATCH "$OUT/bench_$dtype.md" 2>/dev/null) parity mismatches)"
    done
fi

if has_step demo; then
    cfg=configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py
    tiny=(); [[ $DEVICE == cpu ]] && tiny=(--cfg-options train_cfg.max_epochs=1
        train_dataloader.dataset.indices=8 val_dataloader.dataset.indices=8
        test_dataloader.dataset.indices=8)
    "$PY" tools/train.py $cfg --work-dir "$SCRATCH/demo" "${tiny[@]}" > "$OUT/demo_train.log" 2>&1
    log "demo train: rc=$? $(grep -oE 'coco/bbox_mAP: [0-9.]+' "$OUT/demo_train.log" | tail -1)"
    "$PY" tools/test.py $cfg "$(cat "$SCRATCH/demo/last_checkpoint")" --work-dir "$SCRATCH/demo" \
        "${tiny[@]}" > "$OUT/demo_test.log" 2>&1
    log "demo test: rc=$? $(grep -oE 'coco/bbox_mAP: [0-9.]+' "$OUT/demo_test.log" | tail -1)"
fi
log done
