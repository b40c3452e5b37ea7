"""Registers and spills of the chunkwise state kernels and the forward output kernel without a GPU:
compile for sm_90a with this machine's Triton, run its bundled ptxas -v (indicative: the device's
Triton may differ). 7B heads (DQK 256, DV 512), L 64, bf16.

Usage (the shadow package of bench/gpu_env.sh or an install on the path):
    python bench/state_ptxas.py states:64:128:4:2:0 states_bwd:64:128:4:2:168 output:64:128:8:3:128
        bwd:64:128:8:3:0
        (kernel : block_k : block_v : warps : stages : maxnreg, 0 for none)
With Triton 3.6 (the device's; `pip install --target DIR triton==3.6.0`, DIR first on PYTHONPATH) the
counts match ncu's on the H100 (states 230, states_bwd 255, output 151 registers at the 16-bit default).
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
from xlstm_edge.kernels.mlstm_chunkwise.backward import (  # noqa: E402
    _bwd_inputs_kernel,
    _bwd_states_kernel,
)
from xlstm_edge.kernels.mlstm_chunkwise.forward import _fwd_output_kernel, _fwd_states_kernel  # noqa: E402

# the PTX version the bundled ptxas reads (Triton 3.6 ships CUDA 12.8's: 8.7; 3.9's reads 8.8)
PTX_VERSION = ".version 8.7" if triton.__version__.startswith("3.6") else ".version 8.8"
PTRS = {
    "states": (_fwd_states_kernel, "k v", "lf ig C0 n0 m0", "Cs", "ns ms Cf nf", "S NC", ""),
    "states_bwd": (_bwd_states_kernel, "q dh", "lf ig mpos norm dden ms dCf dnf", "dCs", "dns dC0 dn0", "S NC", "scale"),
    "output": (_fwd_output_kernel, "q k v", "lf ig", "Cs", "ns ms", "", ""),
    "bwd": (_bwd_inputs_kernel,),
}
# (name, type) of _bwd_inputs_kernel's run-time arguments
BWD_ARGS = [(n, "*bf16") for n in "q k v dh".split()] + [(n, "*fp32") for n in "lf ig mpos norm dden".split()] + [
    ("Cs", "*bf16"), ("ns", "*fp32"), ("ms", "*fp32"), ("dCs", "*bf16"), ("dns", "*fp32")] + [
    (n, "*bf16") for n in "dq dk dv".split()] + [(n, "*fp32") for n in "kdk cross qa ke share".split()]


def report(spec: str) -> str:
    parts = spec.split(":")
    kind = parts[0]
    bk, bv, warps, stages, maxnreg = (int(x) for x in parts[1:6])
    fn = PTRS[kind][0]
    sig = {}
    if kind == "bwd":
        sig = {n + "_ptr": t for n, t in BWD_ARGS}
        sig.update({"S": "i32", "NC": "i32", "scale": "fp32", "NK": "i32", "NV": "i32"})
        const = dict(L=64, DQK=256, DV=512, BK=bk, BV=bv, DOT_PREC="tf32")
    elif kind == "output":
        for n in "q k v".split():
            sig[n + "_ptr"] = "*bf16"
        for n in "lf ig".split():
            sig[n + "_ptr"] = "*fp32"
        sig["Cs_ptr"] = "*bf16"
        for n in "ns ms".split():
            sig[n + "_ptr"] = "*fp32"
        sig["h_ptr"] = "*bf16"
        for n in "mpos den".split():
            sig[n + "_ptr"] = "*fp32"
        sig.update({"S": "i32", "NC": "i32", "scale": "fp32", "eps": "fp32", "NK": "i32", "NV": "i32"})
        const = dict(L=64, DQK=256, DV=512, BK=bk, BV=bv, DOT_PREC="tf32")
    else:
        _, a, b, c, d, _, e = PTRS[kind]
        for n in a.split():
            sig[n + "_ptr"] = "*bf16"
        for n in b.split():
            sig[n + "_ptr"] = "*fp32"
        for n in c.split():
            sig[n + "_ptr"] = "*bf16"
        for n in d.split():
            sig[n + "_ptr"] = "*fp32"
        sig.update({"S": "i32", "NC": "i32"})
        if e:
            sig[e] = "fp32"
        const = dict(L=64, DQK=256, DV=512, BK=bk, BV=bv, DOT_PREC="tf32")
        const["HAS_INIT" if kind == "states" else "HAS_DFINAL"] = False
    sig.update(dict.fromkeys(const, "constexpr"))
    # the specialisation the launch at S 8192 gets: 16-byte aligned pointers, S and NC multiples of 16
    names = list(fn.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
             if t.startswith("*") or n in ("S", "NC")}  # fmt: skip
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    opts = dict(num_warps=warps, num_stages=stages)
    if maxnreg:
        opts["maxnreg"] = maxnreg
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        ptx = os.path.join(d, "k.ptx")
        with open(ptx, "w") as fh:
            fh.write(re.sub(r"^\.version \d+\.\d+", PTX_VERSION, k.asm["ptx"], flags=re.M))
        out = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", ptx, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True).stderr  # fmt: skip
    lines = [x.strip() for x in out.splitlines() if "spill" in x or "registers" in x]
    return f"{spec}: shared {k.metadata.shared} B; " + "; ".join(lines)


if __name__ == "__main__":
    for spec in sys.argv[1:]:
        print(report(spec), flush=True)
