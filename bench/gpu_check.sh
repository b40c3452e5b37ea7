#!/usr/bin/env bash
# One device run for the Triton kernels: GPU tests (tests/kernels/test_gpu.py) and the kernel
# benchmark (bench/kernels.py), results under $OUT. Run from the repository root:
#     OUT=/tmp/out bash bench/gpu_check.sh
# Makes `xlstm_edge` (with xlstm_edge.kernels -> kernels/) importable without pip: a shadow package
# of symlinks, imported before pytest can put the repository root first on sys.path. NX-AI's
# mlstm_kernels (a benchmark comparator only) is installed from .whl/ when that folder is there.
set -uo pipefail
OUT=${OUT:-/tmp/kernels_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
ROOT=$(pwd)
LOG="$OUT/gpu_check.log"
SHADOW=$(mktemp -d)
mkdir "$SHADOW/xlstm_edge"
for f in "$ROOT"/xlstm_edge/*; do ln -s "$f" "$SHADOW/xlstm_edge/"; done
ln -s "$ROOT/kernels" "$SHADOW/xlstm_edge/kernels"
export PYTHONPATH="$SHADOW:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
    echo "import xlstm_edge.kernels.mlstm_chunkwise as m; print('kernels from', m.__file__)" >"$SHADOW/where.py"
    python3 "$SHADOW/where.py"
} 2>&1 | tee "$LOG"

# compile the benchmark's candidate configurations in parallel while the tests run
SHAPES=${SHAPES:-8x256x512,16x128x128}
pids=()
for j in 0 1 2 3 4; do
    python3 bench/kernels.py --warm "$j" --shapes "$SHAPES" >"/tmp/warm_$j.log" 2>&1 &
    pids+=($!)
done
# a script file (not python -c, which puts the repository root first on sys.path)
cat >"$SHADOW/run_tests.py" <<'PY'
import sys

import xlstm_edge.kernels.mlstm_chunkwise  # noqa: F401  the shadow package, before pytest edits sys.path
import pytest

sys.exit(pytest.main(["-q", "-s", "-rA", "-p", "no:cacheprovider", "-m", "gpu", "tests/kernels/test_gpu.py"]))
PY
python3 "$SHADOW/run_tests.py" 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
for p in "${pids[@]}"; do wait "$p"; done
cat /tmp/warm_*.log >>"$LOG"
echo "gpu tests exit code: $tests_rc" | tee -a "$LOG"

python3 bench/kernels.py --out "$OUT" --shapes "$SHAPES" ${SEQS:+--seqs $SEQS} 2>&1 | tee -a "$LOG"
echo "bench exit code: ${PIPESTATUS[0]}" | tee -a "$LOG"
