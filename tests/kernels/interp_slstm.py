"""sLSTM Triton kernels, fused forward and backward (Triton's CPU interpreter, float32), against the
float64 reference scan: outputs, final state, and gradients of wx, R and the initial state.
Run through test_interpreter.py."""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.kernels.common import interpreter_on

from tests.conftest import rel_err
from xlstm_edge.slstm import slstm_scan

if not interpreter_on():
    pytest.skip("needs TRITON_INTERPRET=1 (see test_interpreter.py)", allow_module_level=True)

from xlstm_edge.kernels.slstm import slstm_scan_triton  # noqa: E402


@pytest.mark.parametrize(
    "DH,with_state,final_grads",
    [(16, False, False), (24, True, True)],  # 24: a head dim that is not a power of two (masked lanes)
)
def test_scan_matches_float64(seed, DH, with_state, final_grads):
    B, S, NH = 2, 9, 2
    wx = torch.randn(B, S, 4, NH, DH)
    R = torch.randn(NH, DH, 4 * DH) / DH**0.5
    leaves = [wx, R]
    if with_state:
        y, c, n, m = (torch.randn(B, NH, DH) for _ in range(4))
        leaves += [y, c, n.abs() + 0.5, m]
    leaves = [t.clone().requires_grad_() for t in leaves]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    y, final = slstm_scan_triton(leaves[0], leaves[1], tuple(leaves[2:]) or None)
    y64, final64 = slstm_scan(leaves64[0], leaves64[1], tuple(leaves64[2:]) or None)
    outs, outs64 = [y, *final], [y64, *final64]
    errs = {f"out{j}": rel_err(a, b) for j, (a, b) in enumerate(zip(outs, outs64, strict=True))}
    if not final_grads:
        outs, outs64 = outs[:1], outs64[:1]
    grads = [torch.randn_like(o) for o in outs64]
    torch.autograd.backward(outs, [g.float() for g in grads])
    torch.autograd.backward(outs64, grads)
    names = ("wx", "R", "y0", "c0", "n0", "m0")
    errs.update({f"d{n}": rel_err(a.grad, b.grad) for n, a, b in zip(names, leaves, leaves64, strict=False)})
    bad = {k: v for k, v in errs.items() if not v <= 1e-5}
    assert not bad, (seed, bad)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="wx must be"):
        slstm_scan_triton(torch.randn(1, 3, 3, 2, 8), torch.randn(2, 8, 32))
    with pytest.raises(ValueError, match="R has shape"):
        slstm_scan_triton(torch.randn(1, 3, 4, 2, 8), torch.randn(2, 8, 24))
