#!/usr/bin/env bash
# Every GPU kernel test (tests/kernels/test_gpu.py: chunkwise forward and backward at every training
# shape, the fused step, the sLSTM scan, the state kernels) under compute-sanitizer's memcheck, which
# reports any out-of-range global, shared or local access (issue 16: the chunkwise backward read shared
# memory past a tile at the demo model's shape). Run from the repository root on the GPU machine:
#     OUT=/tmp/out bash bench/gpu_memcheck.sh        (bench/gpu_check.sh calls it as its `memcheck` stage)
# Writes $OUT/memcheck.log; exits non-zero on any memcheck error or test failure.
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
cat >"$SHADOW/run_memcheck_tests.py" <<'PY'
import sys

import xlstm_edge.kernels.mlstm_chunkwise  # noqa: F401  the shadow package, before pytest edits sys.path
import pytest

sys.exit(pytest.main(["-q", "-rA", "-p", "no:cacheprovider", "tests/kernels/test_gpu.py"] + sys.argv[1:]))
PY
# --error-exitcode: a memcheck finding fails the run even when every test passes
timeout "${MEMCHECK_TIMEOUT:-500}" compute-sanitizer --tool memcheck --error-exitcode 86 --print-limit 20 \
    python3 "$SHADOW/run_memcheck_tests.py" "$@" >"$OUT/memcheck.log" 2>&1
rc=$?
grep -E "ERROR SUMMARY|passed|failed|error" "$OUT/memcheck.log" | tail -n 5
echo "memcheck exit code: $rc (0: no memcheck error and every test passed; 86: memcheck errors)"
exit $rc
