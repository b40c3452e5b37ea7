#!/usr/bin/env bash
# Where the time goes (issue 16, before any tuning). Run from the repository root on the GPU machine:
#     OUT=/tmp/out bash bench/gpu_ncu.sh
# 1. ncu (--clock-control none: the card's clocks as found) on one chunkwise fwd+bwd, bf16, default
#    config: xLSTM 7B heads at 65k tokens (B 8, NH 8, S 8192) and the `small` preset's training shape
#    (B 16, NH 4, S 2048, 96/192): per kernel duration, SM / memory throughput, tensor-pipe use,
#    occupancy, registers. Full reports in $OUT/ncu_*.txt.
# 2. torch.profiler over `small` preset training steps: device time per kernel family.
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
SECTIONS="--section SpeedOfLight --section Occupancy --section LaunchStats --section ComputeWorkloadAnalysis --section WarpStateStats --section MemoryWorkloadAnalysis"
# NCU_SHAPES: ';'-separated "B NH S DQK DV" (default both); PROFILE_TRAIN=0 skips part 2
IFS=';' read -ra NCU_LIST <<<"${NCU_SHAPES:-8 8 8192 256 512;16 4 2048 96 192}"
for shape in "${NCU_LIST[@]}"; do
    tag=$(echo "$shape" | tr ' ' '_')
    # 6 launches per fwd+bwd (states fwd, output fwd, delta, states fwd again, states bwd, inputs bwd)
    timeout 240 ncu --clock-control none --launch-skip 6 --launch-count 6 -k 'regex:_(fwd|bwd)_' \
        $SECTIONS --csv python3 bench/gpu_profile.py kernel $shape >"$OUT/ncu_$tag.csv" 2>"$OUT/ncu_$tag.err"
    echo "ncu $shape exit $?"
    python3 - "$OUT/ncu_$tag.csv" <<'PY'
import csv, sys
from collections import defaultdict
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
head, body = rows[0], rows[1:]
ki, mi, vi, ui = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value"), head.index("Metric Unit")
idi = head.index("ID")
per = defaultdict(dict)
names = {}
for r in body:
    per[r[idi]][r[mi]] = (r[vi], r[ui])
    names[r[idi]] = r[ki][:22]
want = ["Duration", "Compute (SM) Throughput", "Memory Throughput", "DRAM Throughput", "L1/TEX Hit Rate",
        "L2 Hit Rate", "Executed Ipc Active", "Registers Per Thread", "Grid Size", "Block Size",
        "Dynamic Shared Memory Per Block", "Achieved Occupancy", "Theoretical Occupancy",
        "Block Limit Registers", "Warp Cycles Per Issued Instruction", "Issue Slots Busy"]
short = {k: k for k in want}
print(" | ".join(["kernel"] + list(short.values())))
for i, m in per.items():
    print(" | ".join([names[i]] + [f"{m[k][0]} {m[k][1]}".strip() if k in m else "-" for k in short]))
PY
done 2>&1 | tee "$OUT/ncu_summary.txt"
if [ "${PROFILE_TRAIN:-1}" != 0 ]; then
    timeout 240 python3 bench/gpu_profile.py train small 16 2048 2>&1 | tee "$OUT/train_profile.txt"
fi
