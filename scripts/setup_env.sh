#!/usr/bin/env bash
# Create (or bring up to date) a virtual environment with a pinned OpenMMLab stack,
# then install mmplug in editable mode with its dev extras.
#
#   bash scripts/setup_env.sh                        # what `make setup` runs (the main stack)
#   STACK=floor VENV=.venv-floor bash scripts/setup_env.sh   # what `make compat` runs
#
# Environment:
#   STACK     which pinned stack: `main` (requirements/constraints.txt: Python 3.11,
#             torch 2.13) or `floor` (requirements/constraints-floor.txt: Python 3.9,
#             torch 2.1.2, the oldest we support)              (default: main)
#   VENV      where the environment lives                      (default: .venv)
#   PYTHON    the interpreter that creates it  (default: pythonX.Y of the stack, or
#             pyenv's X.Y when that is not on PATH)
#   MAX_JOBS  parallel compile jobs for mmcv's ops             (default: number of cores)
#   FORCE_CUDA=1 / =0  build mmcv's CUDA ops or not  (default: 1 when nvcc and a
#             CUDA build of torch are both present, else 0)
#
# Idempotent: a stamp records the hash of this script, the constraints and
# pyproject.toml; when nothing changed and mmcv's ops still import, it returns at
# once. mmcv 2.1.0 has no wheels on PyPI: it is built from source (12-21 min on 2
# cores) into a wheelhouse keyed by Python, torch and FORCE_CUDA, because an mmcv
# built against one torch fails to import under another (`undefined symbol` in
# mmcv/_ext), and pip's own wheel cache keys it by name and version only.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
STACK=${STACK:-main}
case $STACK in
    main) CONSTRAINTS=$ROOT/requirements/constraints.txt; PY_VERSION=3.11 ;;
    floor) CONSTRAINTS=$ROOT/requirements/constraints-floor.txt; PY_VERSION=3.9 ;;
    *) printf '[setup] ERROR: STACK must be main or floor, got %q\n' "$STACK" >&2; exit 1 ;;
esac
VENV=${VENV:-$ROOT/.venv}
STAMP=$VENV/.mmplug-setup-stamp

log() { printf '[setup] %s\n' "$*"; }
die() { printf '\n[setup] ERROR: %s\n\n' "$*" >&2; exit 1; }

find_python() {
    if [[ -n ${PYTHON:-} ]]; then echo "$PYTHON"; return; fi
    if command -v "python$PY_VERSION" >/dev/null && "python$PY_VERSION" -V >/dev/null 2>&1; then
        echo "python$PY_VERSION"; return
    fi
    if command -v pyenv >/dev/null; then
        local found
        found=$(ls -d "$(pyenv root)/versions/$PY_VERSION".*/bin/"python$PY_VERSION" 2>/dev/null \
                | sort -V | tail -1)
        [[ -n $found ]] && { echo "$found"; return; }
    fi
    echo "python$PY_VERSION"
}

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

PYTHON=$(find_python)
command -v "$PYTHON" >/dev/null || die "$PYTHON not found. Install Python $PY_VERSION or set PYTHON=/path/to/python$PY_VERSION."
"$PYTHON" -c "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$PY_VERSION')" 2>/dev/null \
    || die "$PYTHON is $("$PYTHON" --version 2>&1); the $STACK stack needs Python $PY_VERSION (set PYTHON=...)."

if [[ ! -x $VENV/bin/python ]]; then
    log "creating virtual environment $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

log "build tools and torch ($STACK stack: $CONSTRAINTS)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "setuptools>=77.0.3,<81" wheel numpy
"${PIP[@]}" install -q -c "$CONSTRAINTS" torch mmengine

if [[ -z ${FORCE_CUDA:-} ]]; then
    FORCE_CUDA=0
    if command -v nvcc >/dev/null && "$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)'; then
        FORCE_CUDA=1
    fi
fi

if mmcv_ops_ok; then
    log "mmcv 2.1.0 with ops already installed"
else
    key=$("$VENV/bin/python" -c 'import sys, torch; print(f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}")')
    WHEELHOUSE=${XDG_CACHE_HOME:-$HOME/.cache}/mmplug/mmcv-wheels/$key-cuda$FORCE_CUDA
    mkdir -p "$WHEELHOUSE"
    if ! ls "$WHEELHOUSE"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
        log "building mmcv 2.1.0 with ops for $key (FORCE_CUDA=$FORCE_CUDA) into $WHEELHOUSE; first time takes 12-21 min on 2 cores"
        MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            "${PIP[@]}" wheel -c "$CONSTRAINTS" --no-deps --no-build-isolation --no-cache-dir \
            -w "$WHEELHOUSE" mmcv==2.1.0
    fi
    "${PIP[@]}" install -q -c "$CONSTRAINTS" "$WHEELHOUSE"/mmcv-2.1.0-*.whl
    if ! mmcv_ops_ok; then
        "${PIP[@]}" uninstall -y -q mmcv || true
        rm -f "$WHEELHOUSE"/mmcv-2.1.0-*.whl
        die "mmcv installed but its compiled ops (mmcv._ext) do not import.
  This is the well-known silent failure of building mmcv with build isolation or
  without MMCV_WITH_OPS=1, or of a wheel built against another torch. The wheel was
  removed from $WHEELHOUSE; run this script again. Details:
$("$VENV/bin/python" -c 'import mmcv._ext' 2>&1 | tail -3)"
    fi
fi

# ftfy and regex: mmseg imports them; psutil: mmdet's tools/analysis_tools/benchmark.py.
log "mmdet, mmsegmentation and their import-time extras"
"${PIP[@]}" install -q -c "$CONSTRAINTS" mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex psutil

log "mmplug (editable, with dev extras)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT[dev]"

"$VENV/bin/python" - <<'EOF' || die "the stack installed but does not import together (see the traceback above)"
import sys, torch, mmengine, mmcv, mmdet, mmseg, mmplug
from mmcv.ops import nms  # noqa: F401
print(f'[setup] Python {sys.version.split()[0]}, torch {torch.__version__}, mmengine '
      f'{mmengine.__version__}, mmcv {mmcv.__version__} (ops ok), mmdet {mmdet.__version__}, '
      f'mmseg {mmseg.__version__}, mmplug {mmplug.__version__}')
EOF
echo "$want" > "$STAMP"
log "done: activate with 'source $VENV/bin/activate'"
