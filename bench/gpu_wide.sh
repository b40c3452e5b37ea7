#!/usr/bin/env bash
# One device call (issue 16, fifth session): the one-DQK-tile input-gradient kernel
# (backward._bwd_inputs_wide_kernel) against cc8a039's (_bwd_inputs_kernel) and NX-AI limit_chunk.
#     OUT=/tmp/out [MAIN_TREE=../other] [VERIFY=1] bash bench/gpu_wide.sh
# MAIN_TREE: another checkout whose GPU kernel tests and memcheck (bench/gpu_glue.sh GLUE_STAGES=verify
# TESTS=kernels) run first, logs in $OUT/main/, while this tree's e2e rows compile. VERIFY=1: this
# tree's own tests/kernels/test_gpu.py beside memcheck first (bench/gpu_glue.sh), logs in $OUT/.
# WIDE_TESTS: pytest -k expression of this tree's test_gpu.py run (no memcheck) beside MAIN_TREE's.
# Then glue_probe.py --parts e2e --nxai (E2E_SETUPS) and ncu of one input-gradient launch
# (bench/gpu_ncu_inputs.sh, NCU_TIMEOUT, 0: skipped).
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
machine_header | tee "$OUT/wide.log"
cat COMMIT 2>/dev/null | tee -a "$OUT/wide.log" || true
(timeout 300 python3 bench/glue_probe.py warm --parts e2e >"$OUT/warm_wide.log" 2>&1) &
warm_pid=$!
tests_pid=""
if [ -n "${WIDE_TESTS:-}" ]; then  # this tree's test_gpu.py, pytest -k "$WIDE_TESTS", no memcheck, beside the rest
    cat >"$SHADOW/run_wide_tests.py" <<'PY'
import sys

import xlstm_edge.kernels.mlstm_chunkwise  # noqa: F401  the shadow package, before pytest edits sys.path
import pytest

sys.exit(pytest.main(["-q", "-s", "-rA", "-p", "no:cacheprovider", "tests/kernels/test_gpu.py"] + sys.argv[1:]))
PY
    (timeout "${TESTS_TIMEOUT:-300}" python3 "$SHADOW/run_wide_tests.py" -k "$WIDE_TESTS" >"$OUT/wide_tests.log" 2>&1
     echo "wide-tree tests (-k $WIDE_TESTS) exit $?" >"$OUT/wide_tests_rc") &
    tests_pid=$!
fi
if [ -n "${MAIN_TREE:-}" ]; then
    (cd "$MAIN_TREE" && env -u XLSTM_SHADOW -u PYTHONPATH OUT="$OUT/main" GLUE_STAGES=verify TESTS=kernels \
        PROBE_PARTS=profile TESTS_TIMEOUT="${TESTS_TIMEOUT:-300}" MEMCHECK_TIMEOUT="${MEMCHECK_TIMEOUT:-330}" \
        bash bench/gpu_glue.sh) 2>&1 | grep -v Warning | tee -a "$OUT/wide.log"
fi
if [ -n "${VERIFY:-}" ]; then
    GLUE_STAGES=verify TESTS=kernels PROBE_PARTS=profile TESTS_TIMEOUT="${TESTS_TIMEOUT:-300}" \
        MEMCHECK_TIMEOUT="${MEMCHECK_TIMEOUT:-330}" bash bench/gpu_glue.sh 2>&1 | grep -v Warning | tee -a "$OUT/wide.log"
fi
wait $warm_pid $tests_pid
if [ -n "$tests_pid" ]; then
    { cat "$OUT/wide_tests_rc"; grep -E "^(PASSED|FAILED)|passed|failed" "$OUT/wide_tests.log" | tail -n 8; } | tee -a "$OUT/wide.log"
fi
grep WARM "$OUT/warm_wide.log" | tee -a "$OUT/wide.log"
timeout "${E2E_TIMEOUT:-150}" python3 bench/glue_probe.py --parts e2e --nxai 2>&1 | grep -v Warning | tee -a "$OUT/wide.log"
if [ "${NCU_TIMEOUT:-90}" != 0 ]; then
    NCU_TIMEOUT=${NCU_TIMEOUT:-90} bash bench/gpu_ncu_inputs.sh 2>&1 | tee -a "$OUT/wide.log"
fi
