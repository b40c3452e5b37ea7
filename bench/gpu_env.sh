# Sourced by the bench/gpu_*.sh scripts, from the repository root: strict mode, $OUT (made), unbuffered
# Python, $ROOT, and the shadow package that maps xlstm_edge.kernels to kernels/ (the source tree's
# layout without an install), made once per run and shared with the scripts it starts through
# $XLSTM_SHADOW; $PYTHONPATH puts it first.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ROOT=$(pwd)
SHADOW=${XLSTM_SHADOW:-}
if [ -z "$SHADOW" ]; then
    SHADOW=$(mktemp -d)
    mkdir "$SHADOW/xlstm_edge"
    for f in "$ROOT"/xlstm_edge/*; do ln -s "$f" "$SHADOW/xlstm_edge/"; done
    ln -s "$ROOT/kernels" "$SHADOW/xlstm_edge/kernels"
    export PYTHONPATH="$SHADOW:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
    export XLSTM_SHADOW="$SHADOW"
fi
