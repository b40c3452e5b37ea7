#!/usr/bin/env bash
# One device call (issue 16, fourth session): the GPU tests beside bench/gpu_memcheck.sh while
# bench/glue_probe.py compiles what it will time; then, on the idle GPU, bench/glue_probe.py's parts
# (profile, per-kernel launch variants, end-to-end timings with NX-AI limit_chunk from .whl/).
#     OUT=/tmp/out bash bench/gpu_glue.sh
# GLUE_STAGES: any of "verify time" (default both). TESTS: "all" (bench/gpu_check.sh STAGES=tests:
# tests/kernels/test_gpu.py and the `gpu` tests of tests/test_train.py, default) or "kernels"
# (tests/kernels/test_gpu.py only). PROBE_PARTS: glue_probe.py's --parts (default profile,kernels,e2e).
# SWEEP_FIRST=1: glue_probe.py's per-kernel variants first, on the idle GPU; a state-kernel launch
# that beats the default by 2% (glue_probe.py override) is put in force (XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT)
# for the tests, memcheck and timings that follow (PROBE_PARTS then defaults to e2e). FLAKE=1:
# bench/flake_probe.py before everything.
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
GLUE_STAGES=${GLUE_STAGES:-verify time}
has() { [[ " $GLUE_STAGES " == *" $1 "* ]]; }
{
    machine_header
    cat COMMIT 2>/dev/null || true
} 2>&1 | tee "$OUT/glue.log"
if [ -n "${FLAKE:-}" ]; then  # bench/flake_probe.py first, on the idle GPU
    timeout "${FLAKE_TIMEOUT:-90}" python3 bench/flake_probe.py 2>&1 | grep -v Warning | tee -a "$OUT/glue.log"
fi
if [ -n "${SWEEP_FIRST:-}" ]; then
    timeout "${WARM_TIMEOUT:-120}" python3 bench/glue_probe.py warm --parts kernels 2>&1 | grep WARM | tee -a "$OUT/glue.log"
    timeout "${KERNELS_TIMEOUT:-90}" python3 bench/glue_probe.py --parts kernels 2>&1 | grep -v Warning | tee -a "$OUT/glue.log"
    over=$(python3 bench/glue_probe.py override 2>/dev/null)
    if [ -n "$over" ] && [ -z "${XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT:-}" ]; then
        export XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT="$over"
    fi
    PROBE_PARTS=${PROBE_PARTS:-e2e}
fi
PROBE_PARTS=${PROBE_PARTS:-profile,kernels,e2e}
echo "16-bit launch override: ${XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT:-none}" | tee -a "$OUT/glue.log"
(timeout "${WARM_TIMEOUT:-200}" python3 bench/glue_probe.py warm --parts "$PROBE_PARTS" >"$OUT/warm.log" 2>&1) &
warm_pid=$!
if has verify; then
    if [ "${TESTS:-all}" = all ]; then
        { tests_beside_memcheck "${TESTS_TIMEOUT:-280}" "${MEMCHECK_TIMEOUT:-300}"
          grep -E "passed|failed|^FAILED|rror" "$OUT/gpu_tests.log" | tail -n 12; } 2>&1 | tee -a "$OUT/glue.log"
    else
        cat >"$SHADOW/run_kernel_tests.py" <<'PY'
import sys

import xlstm_edge.kernels.mlstm_chunkwise  # noqa: F401  the shadow package, before pytest edits sys.path
import pytest

sys.exit(pytest.main(["-q", "-s", "-rA", "-p", "no:cacheprovider", "tests/kernels/test_gpu.py"] + sys.argv[1:]))
PY
        (timeout "${TESTS_TIMEOUT:-280}" python3 "$SHADOW/run_kernel_tests.py" >"$OUT/gpu_tests.log" 2>&1; echo "gpu tests exit $?" >"$OUT/tests_rc") &
        p1=$!
        (MEMCHECK_TIMEOUT=${MEMCHECK_TIMEOUT:-300} bash bench/gpu_memcheck.sh >"$OUT/memcheck_summary" 2>&1) &
        p2=$!
        wait $p1 $p2
        { cat "$OUT/tests_rc" "$OUT/memcheck_summary"
          grep -E "^(PASSED|FAILED)|passed|failed" "$OUT/gpu_tests.log" | tail -n 8; } 2>&1 | tee -a "$OUT/glue.log"
    fi
fi
wait $warm_pid
grep WARM "$OUT/warm.log" | tee -a "$OUT/glue.log"
if has time; then
    for part in ${PROBE_PARTS//,/ }; do
        extra=""
        [ "$part" = e2e ] && extra="--nxai"
        timeout "${PART_TIMEOUT:-130}" python3 bench/glue_probe.py --parts "$part" $extra 2>&1 | grep -v Warning | tee -a "$OUT/glue.log"
    done
fi
