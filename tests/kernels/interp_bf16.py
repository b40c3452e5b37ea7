"""The bfloat16 kernels on the CPU (Triton's interpreter, with the bf16 fixes of interpreter_bf16.py)
against float64 references on the same rounded inputs and incoming gradients: chunkwise mLSTM
(outputs, final state, every gradient; a partial last chunk, initial state) and the fused step.
Bound 1e-2, the GPU tests' bf16 bound (dm0 against the spread of its terms: see dm0_rel_err).
Run through test_interpreter.py."""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.kernels.common import interpreter_on

from tests.conftest import rel_err
from tests.kernels.interpreter_bf16 import patch_interpreter_bf16
from tests.kernels.metrics import dm0_rel_err
from xlstm_edge.mlstm import mlstm_chunkwise, mlstm_step

if not interpreter_on():
    pytest.skip("needs TRITON_INTERPRET=1 (see test_interpreter.py)", allow_module_level=True)
patch_interpreter_bf16()

from xlstm_edge.kernels.mlstm_chunkwise import mlstm_chunkwise_triton  # noqa: E402
from xlstm_edge.kernels.mlstm_recurrent import mlstm_step_triton  # noqa: E402

TOL = 1e-2
BF16 = torch.bfloat16


@pytest.mark.parametrize("chunk_size", [16, 32])
def test_chunkwise_bf16(seed, chunk_size):
    B, NH, S, DQK, DV = 2, 2, 45, 64, 128
    q, k = (torch.randn(B, NH, S, DQK).to(BF16) for _ in range(2))
    v = torch.randn(B, NH, S, DV).to(BF16)
    i, f = torch.randn(B, NH, S), torch.randn(B, NH, S) + 3
    state = (torch.randn(B, NH, DQK, DV), torch.randn(B, NH, DQK), torch.randn(B, NH))
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f, *state)]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    h, final = mlstm_chunkwise_triton(*leaves[:5], state=tuple(leaves[5:]), chunk_size=chunk_size, return_state=True)
    h64, final64 = mlstm_chunkwise(*leaves64[:5], state=tuple(leaves64[5:]), chunk_size=16)
    assert h.dtype == BF16 and all(t.dtype == torch.float32 for t in final)
    outs, outs64 = [h, *final], [h64, *final64]
    grads = [torch.randn_like(o).to(out.dtype) for o, out in zip(outs64, outs, strict=True)]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(outs64, [g.double() for g in grads])
    errs = {n: rel_err(a, b) for n, a, b in zip(("h", "C", "n", "m"), outs, outs64, strict=True)}
    names = ("dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")
    errs.update({n: rel_err(a.grad, b.grad) for n, a, b in zip(names, leaves, leaves64, strict=True)})
    C0, n0, m0 = leaves[5:]
    C0r, n0r, m0r = leaves64[5:]
    errs["dm0"] = dm0_rel_err(m0.grad, m0r.grad, C0, C0r.grad, n0, n0r.grad)
    assert leaves[0].grad.dtype == BF16
    bad = {n: e for n, e in errs.items() if not e <= TOL}
    assert not bad, (seed, chunk_size, bad)


def test_step_bf16(seed):
    B, NH, DQK, DV = 2, 2, 64, 128
    state = (torch.randn(B, NH, DQK, DV), torch.randn(B, NH, DQK), torch.randn(B, NH))
    state64 = tuple(t.double() for t in state)
    for step in range(3):
        q, k = (torch.randn(B, NH, DQK).to(BF16) for _ in range(2))
        v = torch.randn(B, NH, DV).to(BF16)
        i, f = torch.randn(B, NH), torch.randn(B, NH) + 3
        h, state = mlstm_step_triton(q, k, v, i, f, state)
        h64, state64 = mlstm_step(*(t.double() for t in (q, k, v, i, f)), state64)
        assert h.dtype == BF16 and state[0].dtype == torch.float32
        errs = [rel_err(h, h64)] + [rel_err(a, b) for a, b in zip(state, state64, strict=True)]
        assert max(errs) <= TOL, (seed, step, errs)
