"""Backend choice: PyTorch forms on CPU, Triton on CUDA, a clear error for a backend that cannot run."""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.kernels import dispatch

from tests.conftest import rel_err
from xlstm_edge.mlstm import mlstm_chunkwise, mlstm_step
from xlstm_edge.slstm import slstm_scan


def test_cpu_auto_runs_the_pytorch_forms(seed):
    B, NH, S, DQK, DV = 1, 2, 9, 8, 8
    q, k = torch.randn(B, NH, S, DQK), torch.randn(B, NH, S, DQK)
    v, i, f = torch.randn(B, NH, S, DV), torch.randn(B, NH, S), torch.randn(B, NH, S)
    h, (C, n, m) = dispatch.mlstm_chunkwise(q, k, v, i, f, chunk_size=4)
    h_ref, (C_ref, _, _) = mlstm_chunkwise(q, k, v, i, f, chunk_size=4)
    assert rel_err(h, h_ref) == 0 and rel_err(C, C_ref) == 0
    state = (C, n, m)
    h1, _ = dispatch.mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
    h1_ref, _ = mlstm_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], i[:, :, 0], f[:, :, 0], state)
    assert rel_err(h1, h1_ref) == 0
    wx, R = torch.randn(B, S, 4, NH, 8), torch.randn(NH, 8, 32)
    y, _ = dispatch.slstm_scan(wx, R)
    assert rel_err(y, slstm_scan(wx, R)[0]) == 0


def test_backend_resolution(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert dispatch.resolve_backend("cpu") == "torch"
    assert dispatch.resolve_backend("cpu", "torch") == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        dispatch.resolve_backend("cpu", "cuda-graphs")
    if dispatch.triton_available():
        assert dispatch.resolve_backend("cuda") == "triton"
        with pytest.raises(ValueError, match="needs CUDA tensors"):
            dispatch.resolve_backend("cpu", "triton")
    else:
        with pytest.raises(RuntimeError, match="not installed"):
            dispatch.resolve_backend("cuda")


def test_missing_triton_is_named(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs the `triton` package"):
        dispatch.resolve_backend("cuda")
    with pytest.raises(RuntimeError, match="needs the `triton` package"):
        dispatch.resolve_backend("cpu", "triton")
