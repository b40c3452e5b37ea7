"""Registers and spills of `_fwd_fused_kernel` without a GPU: compile it for sm_90a with Triton, then
run Triton's bundled ptxas -v on the PTX (the PTX version lowered to what that ptxas reads).

Usage (any machine with Triton; the shadow package of bench/gpu_env.sh or an install on the path):
    python bench/fused_ptxas.py 64:8:2 32:8:2        (DV tile : warps : stages; 7B heads, L 64, bf16)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

# an editable install maps xlstm_edge.kernels to its own checkout: let the path (a shadow) decide
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from xlstm_edge.kernels.mlstm_chunkwise.forward import _fwd_fused_kernel  # noqa: E402


def report(spec: str) -> str:
    bv, warps, stages = (int(x) for x in spec.split(":"))
    sig = {n: "*bf16" for n in ("q_ptr", "k_ptr", "v_ptr", "h_ptr", "Cs_ptr")}
    for n in ("lf_ptr", "ig_ptr", "C0_ptr", "n0_ptr", "m0_ptr", "mpos_ptr", "den_ptr", "ns_ptr", "ms_ptr",
              "Cf_ptr", "nf_ptr"):  # fmt: skip
        sig[n] = "*fp32"
    sig.update({"S": "i32", "NC": "i32", "scale": "fp32", "eps": "fp32"})
    const = dict(L=64, DQK=256, DKP=256, DV=512, BV=bv, HAS_INIT=False, STORE_STATES=False, DOT_PREC="tf32")
    sig.update(dict.fromkeys(const, "constexpr"))
    src = ASTSource(fn=_fwd_fused_kernel, signature=sig, constexprs=const)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as fh:
            fh.write(re.sub(r"^\.version \d+\.\d+", ".version 8.8", k.asm["ptx"], flags=re.M))
        out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True).stderr  # fmt: skip
    lines = [x.strip() for x in out.splitlines() if "spill" in x or "registers" in x]
    return f"{spec}: shared {k.metadata.shared} B; " + "; ".join(lines)


if __name__ == "__main__":
    for spec in sys.argv[1:] or ["64:8:2"]:
        print(report(spec), flush=True)
