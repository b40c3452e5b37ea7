#!/usr/bin/env bash
# The shortest useful device call for the chunkwise kernels: tests/kernels/test_gpu.py (every GPU
# kernel test, nothing deselected) then bench/time_fwdbwd.py on the kernels here and on an older copy
# at $AB_BASE (with NX-AI limit_chunk from .whl/). Run from the repository root on the GPU machine:
#     OUT=/tmp/out AB_BASE=/path/to/old/checkout bash bench/gpu_quick.sh
source bench/gpu_env.sh  # strict mode, $OUT, $ROOT, the shadow package ($SHADOW)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv 2>&1 | tee "$OUT/quick.log"
echo "16-bit launch override: ${XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT:-none}" | tee -a "$OUT/quick.log"
cat >"$SHADOW/run_gpu_tests.py" <<'PY'
import sys

import xlstm_edge.kernels.mlstm_chunkwise  # noqa: F401  the shadow package, before pytest edits sys.path
import pytest

sys.exit(pytest.main(["-q", "-s", "-rA", "-p", "no:cacheprovider", "tests/kernels/test_gpu.py"] + sys.argv[1:]))
PY
timeout "${TESTS_TIMEOUT:-150}" python3 "$SHADOW/run_gpu_tests.py" >"$OUT/gpu_tests.log" 2>&1
echo "gpu tests exit $?" | tee -a "$OUT/quick.log"
grep -E "^chunkwise|passed|failed|^FAILED" "$OUT/gpu_tests.log" | tail -n 45
timeout "${NEW_TIMEOUT:-45}" python3 bench/time_fwdbwd.py --label "new" 2>&1 | tee -a "$OUT/quick.log"
if [ -n "${AB_BASE:-}" ] && [ -d "$AB_BASE" ]; then
    (cd "$AB_BASE" && env -u XLSTM_SHADOW -u XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT PYTHONPATH=/tmp/site bash -c \
        "source bench/gpu_env.sh; timeout ${AB_TIMEOUT:-80} python3 '$ROOT/bench/time_fwdbwd.py' --label base --nxai") \
        2>&1 | tee -a "$OUT/quick.log"
fi
