#!/usr/bin/env bash
# Create (or bring up to date) the project's virtual environment with the measured
# OpenMMLab stack, then install mmplug in editable mode with its dev extras.
#
#   bash scripts/setup_env.sh            # what `make setup` runs
#
# Environment:
#   VENV      where the environment lives            (default: .venv)
#   PYTHON    the interpreter that creates it        (default: python3.11)
#   MAX_JOBS  parallel compile jobs for mmcv's ops   (default: number of cores)
#   FORCE_CUDA=1 / =0  build mmcv's CUDA ops or not  (default: 1 when nvcc and a
#             CUDA build of torch are both present, else 0)
#
# Idempotent: a stamp records the hash of this script, the constraints and
# pyproject.toml; when nothing changed and mmcv's ops still import, it returns at
# once. The mmcv build (12-21 min on 2 cores) happens once; pip caches the wheel.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3.11}
CONSTRAINTS=$ROOT/requirements/constraints.txt
STAMP=$VENV/.mmplug-setup-stamp

log() { printf '[setup] %s\n' "$*"; }
die() { printf '\n[setup] ERROR: %s\n\n' "$*" >&2; exit 1; }

stamp_of() {
    cat "$ROOT/scripts/setup_env.sh" "$CONSTRAINTS" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1
}

mmcv_ops_ok() {
    # The silent failure: an mmcv built without ops imports fine but lacks mmcv._ext.
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import mmcv
assert mmcv.__version__ == '2.1.0', mmcv.__version__
import mmcv._ext  # noqa: F401
from mmcv.ops import nms, DeformConv2dPack, ModulatedDeformConv2dPack  # noqa: F401
EOF
}

want=$(stamp_of)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]] && mmcv_ops_ok; then
    log "environment $VENV is up to date"
    exit 0
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found. Install Python 3.11 or set PYTHON=/path/to/python3.11."
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
    || die "$PYTHON is $("$PYTHON" --version 2>&1); the measured stack needs Python 3.11 (set PYTHON=...)."

if [[ ! -x $VENV/bin/python ]]; then
    log "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "build tools and torch"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "setuptools>=77.0.3,<81" wheel numpy
"${PIP[@]}" install -q -c "$CONSTRAINTS" torch==2.13.0 mmengine==0.10.7

if [[ -z ${FORCE_CUDA:-} ]]; then
    FORCE_CUDA=0
    if command -v nvcc >/dev/null && "$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.version.cuda else 1)'; then
        FORCE_CUDA=1
    fi
fi

if mmcv_ops_ok; then
    log "mmcv 2.1.0 with ops already installed"
else
    # pip's wheel cache does not know about FORCE_CUDA: a CUDA build must not
    # pick up a cached CPU-only wheel (or the other way round).
    cache_opt=()
    [[ $FORCE_CUDA == 1 ]] && cache_opt=(--no-cache-dir)
    log "building mmcv 2.1.0 with ops (FORCE_CUDA=$FORCE_CUDA); first time takes 12-21 min on 2 cores, then pip's cache makes it seconds"
    MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" install -c "$CONSTRAINTS" --no-build-isolation "${cache_opt[@]}" mmcv==2.1.0
    if ! mmcv_ops_ok; then
        "${PIP[@]}" uninstall -y -q mmcv || true
        "${PIP[@]}" cache remove mmcv >/dev/null 2>&1 || true
        die "mmcv installed but its compiled ops (mmcv._ext) do not import.
  This is the well-known silent failure of building mmcv with build isolation or
  without MMCV_WITH_OPS=1. The broken wheel was removed from pip's cache; run this
  script again. Details:
$("$VENV/bin/python" -c 'import mmcv._ext' 2>&1 | tail -3)"
    fi
fi

log "mmdet, mmsegmentation and their import-time extras"
"${PIP[@]}" install -q -c "$CONSTRAINTS" mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex

log "mmplug (editable, with dev extras)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT[dev]"

"$VENV/bin/python" - <<'EOF' || die "the stack installed but does not import together (see the traceback above)"
import torch, mmengine, mmcv, mmdet, mmseg, mmplug
from mmcv.ops import nms  # noqa: F401
print(f'[setup] torch {torch.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__} '
      f'(ops ok), mmdet {mmdet.__version__}, mmseg {mmseg.__version__}, mmplug {mmplug.__version__}')
EOF
echo "$want" > "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
