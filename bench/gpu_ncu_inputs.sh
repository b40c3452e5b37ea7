#!/usr/bin/env bash
# ncu --set full on one _bwd_inputs_kernel launch (the largest kernel of fwd+bwd, 38% of a step) at
# xLSTM 7B heads (B 8, NH 8, S 8192, 256/512, bf16, default config), card clocks as found; the report
# as text in $OUT/ncu_inputs.txt, the source-level counters included. Run from the repository root:
#     OUT=/tmp/out bash bench/gpu_ncu_inputs.sh
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
SHAPE=${NCU_SHAPE:-8 8 8192 256 512}
timeout "${NCU_TIMEOUT:-150}" ncu --clock-control none --launch-skip 1 --launch-count 1 -k 'regex:_bwd_inputs' \
    --set full --import-source yes python3 bench/gpu_profile.py kernel $SHAPE >"$OUT/ncu_inputs.txt" 2>&1
echo "ncu inputs exit $?"
grep -E "Duration|Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued|Issue Slots|Shared Memory|Block Limit|Stall|Bank" "$OUT/ncu_inputs.txt" | head -n 40
