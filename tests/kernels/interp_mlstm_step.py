"""Fused mLSTM step kernel (Triton's CPU interpreter, float32) against the float64 reference step,
chained over a few tokens from a random state. Run through test_interpreter.py."""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.kernels.common import interpreter_on

from tests.conftest import rel_err
from xlstm_edge.mlstm import mlstm_step

if not interpreter_on():
    pytest.skip("needs TRITON_INTERPRET=1 (see test_interpreter.py)", allow_module_level=True)

from xlstm_edge.kernels.mlstm_recurrent import mlstm_step_triton  # noqa: E402


@pytest.mark.parametrize("DQK,DV", [(32, 48), (48, 16)])
def test_steps_match_float64(seed, DQK, DV):
    B, NH = 2, 3
    state = (torch.randn(B, NH, DQK, DV), torch.randn(B, NH, DQK), torch.randn(B, NH))
    state64 = tuple(t.double() for t in state)
    for step in range(3):
        q, k = torch.randn(B, NH, DQK), torch.randn(B, NH, DQK)
        v = torch.randn(B, NH, DV)
        i, f = torch.randn(B, NH) * 2, torch.randn(B, NH) + 2
        h, state = mlstm_step_triton(q, k, v, i, f, state)
        h64, state64 = mlstm_step(*(t.double() for t in (q, k, v, i, f)), state64)
        assert h.dtype == torch.float32
        errs = [rel_err(h, h64)] + [rel_err(a, b) for a, b in zip(state, state64, strict=True)]
        assert max(errs) <= 1e-5, (seed, step, errs)


def test_step_refuses_autograd_and_bad_state():
    B, NH, DQK, DV = 1, 1, 16, 16
    q = torch.randn(B, NH, DQK, requires_grad=True)
    state = (torch.randn(B, NH, DQK, DV), torch.randn(B, NH, DQK), torch.randn(B, NH))
    args = (torch.randn(B, NH, DQK), torch.randn(B, NH, DV), torch.randn(B, NH), torch.randn(B, NH))
    with pytest.raises(ValueError, match="inference only"):
        mlstm_step_triton(q, *args, state)
    with pytest.raises(ValueError, match="state must be float32"):
        mlstm_step_triton(q.detach(), *args, tuple(t.double() for t in state))
