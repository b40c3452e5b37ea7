# Sourced by the bench/gpu_*.sh scripts, from the repository root: strict mode, $OUT (made), unbuffered
# Python, $ROOT, and the shadow package that maps xlstm_edge.kernels to kernels/ (the source tree's
# layout without an install), made once per run and shared with the scripts it starts through
# $XLSTM_SHADOW; $PYTHONPATH puts it first. Wheels carried in .whl/ (NX-AI's mlstm_kernels, a benchmark
# comparator only) are installed once into /tmp/site. Functions: machine_header (the card, clocks,
# versions), tests_beside_memcheck TESTS_TIMEOUT MEMCHECK_TIMEOUT (bench/gpu_check.sh's GPU tests and
# bench/gpu_memcheck.sh at once; summaries on stdout).
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
    if ls .whl/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
            && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
fi

machine_header() {
    date -u
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
}

tests_beside_memcheck() {
    (OUT=$OUT STAGES=tests timeout "$1" bash bench/gpu_check.sh >/dev/null 2>&1; echo "tests exit $?" >/tmp/tests_rc) &
    local p1=$!
    (OUT=$OUT MEMCHECK_TIMEOUT=$2 bash bench/gpu_memcheck.sh >/tmp/memcheck_summary 2>&1) &
    local p2=$!
    wait $p1 $p2
    cat /tmp/tests_rc /tmp/memcheck_summary
}
