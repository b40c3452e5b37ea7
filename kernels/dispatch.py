"""The one place that chooses between the Triton kernels and the PyTorch forms.

backend="auto": Triton for CUDA tensors, the PyTorch forms (`xlstm_edge.mlstm`, `xlstm_edge.slstm`)
for CPU tensors. backend="triton" or "torch" asks for one; asking for one that cannot run here raises
(no silent fallback). Every function has its reference's signature and returns (output, state).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .common import check_triton_device, interpreter_on, triton_available

Backend = Literal["auto", "triton", "torch"]
BACKENDS = ("auto", "triton", "torch")


def resolve_backend(device: torch.device | str, backend: str = "auto") -> str:
    """The backend ("triton" or "torch") for tensors on `device`; raises if it is unknown or unavailable."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torch":
        return "torch"
    if backend == "auto" and device.type != "cuda":
        return "torch"
    if not triton_available():
        raise RuntimeError(
            f"backend {backend!r} on {device} needs the `triton` package, which is not installed "
            "(pip install 'xlstm-edge[triton]', or pass backend='torch')"
        )
    if device.type != "cuda" and not (device.type == "cpu" and interpreter_on()):
        raise ValueError(f"backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); got {device}")
    return "triton"


def mlstm_chunkwise(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor,
    state: tuple[Tensor, Tensor, Tensor] | None = None, chunk_size: int = 64, eps: float = 1e-6,
    *, backend: Backend = "auto", keep_states: bool = False,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """Chunkwise mLSTM -> (h (B,NH,S,DV), final (C, n, m)); shapes as in `xlstm_edge.mlstm`.
    keep_states: the Triton backward reuses the forward's chunk-start states (ChunkwiseConfig)."""
    if resolve_backend(q.device, backend) == "torch":
        from xlstm_edge.mlstm import mlstm_chunkwise as torch_form

        return torch_form(q, k, v, i, f, state, chunk_size=chunk_size, eps=eps)
    from .mlstm_chunkwise import ChunkwiseConfig, mlstm_chunkwise_triton

    check_triton_device("mlstm_chunkwise", q)
    config = ChunkwiseConfig(keep_states=keep_states)
    h, final = mlstm_chunkwise_triton(q, k, v, i, f, state, chunk_size, return_state=True, eps=eps, config=config)
    assert final is not None
    return h, final


def mlstm_step(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, state: tuple[Tensor, Tensor, Tensor],
    eps: float = 1e-6, *, backend: Backend = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:  # fmt: skip
    """One mLSTM token -> (h (B,NH,DV), new (C, n, m)); the Triton form is inference only."""
    if resolve_backend(q.device, backend) == "torch":
        from xlstm_edge.mlstm import mlstm_step as torch_form

        return torch_form(q, k, v, i, f, state, eps=eps)
    from .mlstm_recurrent import mlstm_step_triton

    return mlstm_step_triton(q, k, v, i, f, state, eps=eps)


def slstm_scan(
    wx: Tensor, R: Tensor, state: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    *, backend: Backend = "auto",
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:  # fmt: skip
    """sLSTM over a sequence -> (y (B,S,NH,DH), final (y, c, n, m)); shapes as in `xlstm_edge.slstm`."""
    if resolve_backend(wx.device, backend) == "torch":
        from xlstm_edge.slstm import slstm_scan as torch_form

        return torch_form(wx, R, state)
    from .slstm import slstm_scan_triton

    return slstm_scan_triton(wx, R, state)
