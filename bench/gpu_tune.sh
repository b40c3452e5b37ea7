#!/usr/bin/env bash
# Issue 16, speed, in one device call: the launch sweep of the chunkwise kernels (bench/tune_chunkwise.py:
# compile in parallel, time each kernel alone, the winners combined and checked against float64), then
# bench/time_fwdbwd.py on an older copy of the repository at $AB_BASE (its own shadow package; with
# NX-AI limit_chunk from .whl/) and on the kernels here, then the GPU tests and memcheck beside each
# other with the sweep's 16-bit launch in force (XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT from
# $OUT/tuned_launch.json; float32 keeps its launch). Run from the repository root on the GPU machine:
#     OUT=/tmp/out AB_BASE=/path/to/old/checkout bash bench/gpu_tune.sh
# Stages (TUNE_STAGES, any subset, in this order): compile tune ab verify (AB_NEW= empty: ab times
# only the older copy; the sweep's end-to-end figure is the new one). Without tune, verify and ab
# run the launch written in the code (or a tuned_launch.json already in $OUT).
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
TUNE_STAGES=${TUNE_STAGES:-compile tune ab verify}
has() { [[ " $TUNE_STAGES " == *" $1 "* ]]; }
{
    machine_header
} 2>&1 | tee "$OUT/tune.log"
if has compile; then
    timeout "${COMPILE_TIMEOUT:-150}" python3 bench/tune_chunkwise.py --compile-only ${TUNE_ARGS:-} 2>&1 | tee -a "$OUT/tune.log"
fi
if has tune; then
    timeout "${TUNE_TIMEOUT:-200}" python3 bench/tune_chunkwise.py --skip-compile --out "$OUT" ${TUNE_ARGS:-} 2>&1 | tee -a "$OUT/tune.log"
fi
if [ -s "$OUT/tuned_launch.json" ] && [ "$(cat "$OUT/tuned_launch.json")" != "{}" ]; then
    export XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT="$(cat "$OUT/tuned_launch.json")"
    echo "16-bit launch in force: $XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT" | tee -a "$OUT/tune.log"
fi
if has ab; then
    if [ -n "${AB_BASE:-}" ] && [ -d "$AB_BASE" ]; then
        (cd "$AB_BASE" && env -u XLSTM_SHADOW -u XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT PYTHONPATH=/tmp/site bash -c \
            "source bench/gpu_env.sh; timeout ${AB_TIMEOUT:-150} python3 '$ROOT/bench/time_fwdbwd.py' --label base --nxai ${AB_ARGS:-}") \
            2>&1 | tee "$OUT/ab.log"
    fi
    [ -n "${AB_NEW-1}" ] && timeout 100 python3 bench/time_fwdbwd.py --label "new${XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT:+ (tuned)}" ${AB_ARGS:-} 2>&1 | tee -a "$OUT/ab.log"
fi
if has verify; then
    tests_beside_memcheck "${TESTS_TIMEOUT:-280}" "${MEMCHECK_TIMEOUT:-280}"
    grep -E "passed|failed|^FAILED|Error|chunkwise torch.bfloat16 S=1" "$OUT/gpu_tests.log" | tail -n 30
fi
