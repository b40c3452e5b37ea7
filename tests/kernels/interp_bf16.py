"""The bfloat16 kernels on the CPU (Triton's interpreter, with the bf16 fixes of interpreter_bf16.py)
against float64 references on the same rounded inputs and incoming gradients: chunkwise mLSTM
(outputs, final state, every gradient; a partial last chunk, initial state) and the fused step.
Bound 1e-2, the GPU tests' bf16 bound (gradients against the float64 backward at the kernel's h,
dm0 against the spread of its terms: see tests/kernels/metrics.py).
Run through test_interpreter.py."""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.kernels.common import interpreter_on

from tests.conftest import rel_err
from tests.kernels.interpreter_bf16 import patch_interpreter_bf16
from tests.kernels.metrics import chunkwise_errors, grad_failures
from xlstm_edge.mlstm import mlstm_step

if not interpreter_on():
    pytest.skip("needs TRITON_INTERPRET=1 (see test_interpreter.py)", allow_module_level=True)
patch_interpreter_bf16()

from xlstm_edge.kernels.mlstm_recurrent import mlstm_step_triton  # noqa: E402

TOL = 1e-2
BF16 = torch.bfloat16


@pytest.mark.parametrize("chunk_size", [16, 32])
def test_chunkwise_bf16(seed, chunk_size):
    errs = chunkwise_errors((2, 2, 45, 64, 128), BF16, chunk_size, "cpu")
    bad = grad_failures(errs, TOL)
    assert not bad, (seed, chunk_size, bad)


def test_chunkwise_fused_forward_bf16(seed):
    """The one-kernel forward (ChunkwiseConfig.fused_forward) in bfloat16, DQK 48 (padded inside)."""
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig

    cfg = ChunkwiseConfig(fused_forward=True, block_v_fused=32)
    errs = chunkwise_errors((2, 2, 45, 48, 64), BF16, 16, "cpu", cfg)
    bad = grad_failures(errs, TOL)
    assert not bad, (seed, bad)


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
