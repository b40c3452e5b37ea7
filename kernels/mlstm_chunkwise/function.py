"""Autograd wrapper and the public op `mlstm_chunkwise_triton`.

Same signature and results as the PyTorch reference `xlstm_edge.mlstm.mlstm_chunkwise` (q scaled by
1/sqrt(DQK) inside; C and n hold unscaled k; initial m = 0), computed by the kernels in forward.py and
backward.py. The chunk-start states are recomputed in the backward pass unless
ChunkwiseConfig.keep_states keeps them from the forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..common import KERNEL_DTYPES, check_float, check_shape, check_triton_device, is_pow2
from . import backward as _backward
from .backward import (
    chunk_inputs_bwd,
    chunk_states_bwd,
    gate_grads,
    gate_grads_fused,
    output_grad_terms,
)
from .forward import (
    ChunkwiseConfig,
    _chunk_launch,
    chunk_fused_fwd,
    chunk_output_fwd,
    chunk_states_fwd,
    use_fused_forward,
)

MLSTMState = tuple[Tensor, Tensor, Tensor]  # (C, n, m)
_SIDE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for the backward's overlapped launch (backward.OVERLAP_GRAD_TERMS)."""
    if device not in _SIDE_STREAMS:
        _SIDE_STREAMS[device] = torch.cuda.Stream(device)
    return _SIDE_STREAMS[device]

# Largest chunk on CUDA. L = 128 (L x L float32 tiles in the per-chunk kernels) compiled on an H100
# (Triton 3.6) but gave wrong h and gradients in some runs and not others, with either pipelining
# depth, while the state kernels agreed tile for tile: a race or miscompile not found yet (2026-11-23).
# In 6 draws float32 was right every time and bfloat16 wrong in some (bench/results/kernels.md).
MAX_CUDA_CHUNK = 64


@dataclass(frozen=True)
class _Settings:
    chunk_size: int
    eps: float
    config: ChunkwiseConfig


class MLSTMChunkwiseFunction(torch.autograd.Function):
    """(q, k, v, i, f, C0, n0, m0, settings) -> (h, C_S, n_S, m_S); the initial state may be None.

    q, k (B,NH,S,DQK), v (B,NH,S,DV), i, f (B,NH,S) contiguous; C0 (B,NH,DQK,DV), n0 (B,NH,DQK),
    m0 (B,NH) float32. h has q's dtype; the final state is float32.
    """

    @staticmethod
    def forward(ctx, q, k, v, i, f, C0, n0, m0, settings: _Settings):
        B, NH, S, DQK = q.shape
        DV = v.shape[-1]
        BH = B * NH
        qf, kf, vf = q.reshape(BH, S, DQK), k.reshape(BH, S, DQK), v.reshape(BH, S, DV)
        lf = F.logsigmoid(f.float()).reshape(BH, S).contiguous()
        ig = i.float().reshape(BH, S).contiguous()
        init = None
        if C0 is not None:
            init = (C0.reshape(BH, DQK, DV), n0.reshape(BH, DQK), m0.reshape(BH))
        L, cfg = settings.chunk_size, settings.config
        if use_fused_forward(DQK, DV, cfg, q.dtype):
            h, m_pos, den, Cf, nf, ms, Cs, ns = chunk_fused_fwd(
                qf, kf, vf, lf, ig, init, L, settings.eps, cfg, store_states=cfg.keep_states
            )
        else:
            Cs, ns, ms, Cf, nf = chunk_states_fwd(kf, vf, lf, ig, init, L, cfg)
            h, m_pos, den = chunk_output_fwd(qf, kf, vf, lf, ig, Cs, ns, ms, L, settings.eps, cfg)
        mf = ms[:, -1].clone()
        if not cfg.keep_states:
            Cs = ns = ms = None  # recomputed in the backward
        ctx.settings = settings
        ctx.has_init = init is not None
        ctx.save_for_backward(q, k, v, i, f, C0, n0, m0, h, m_pos, den, Cf, nf, Cs, ns, ms)
        ctx.set_materialize_grads(False)
        return h.view(B, NH, S, DV), Cf.view(B, NH, DQK, DV), nf.view(B, NH, DQK), mf.view(B, NH)

    @staticmethod
    def backward(ctx, dh, dCf, dnf, dmf):
        q, k, v, i, f, C0, n0, m0, h, m_pos, den, Cf, nf, Cs, ns, ms = ctx.saved_tensors
        settings: _Settings = ctx.settings
        L, cfg, eps = settings.chunk_size, settings.config, settings.eps
        B, NH, S, DQK = q.shape
        DV = v.shape[-1]
        BH = B * NH
        qf, kf, vf = q.reshape(BH, S, DQK), k.reshape(BH, S, DQK), v.reshape(BH, S, DV)
        lf = F.logsigmoid(f.float()).reshape(BH, S).contiguous()
        ig = i.float().reshape(BH, S).contiguous()
        init = (C0.reshape(BH, DQK, DV), n0.reshape(BH, DQK), m0.reshape(BH)) if ctx.has_init else None
        if dh is None:
            dh = torch.zeros_like(h)
        dh = dh.reshape(BH, S, DV).to(q.dtype).contiguous()
        dfinal = None
        final_share = None
        if dCf is not None or dnf is not None:
            dCf = torch.zeros_like(Cf) if dCf is None else dCf.reshape(BH, DQK, DV).float().contiguous()
            dnf = torch.zeros_like(nf) if dnf is None else dnf.reshape(BH, DQK).float().contiguous()
            dfinal = (dCf, dnf)
            final_share = (Cf * dCf).sum((-2, -1)) + (nf * dnf).sum(-1)
        dm_final = None if dmf is None else dmf.reshape(BH).float()

        fused_glue = _backward.FUSED_GLUE
        grad_terms = output_grad_terms
        if Cs is None and q.is_cuda and _backward.OVERLAP_GRAD_TERMS:
            # the normaliser's terms (memory-bound) on a side stream, beside the state recompute
            # (latency-bound, leaving bandwidth and room on every multiprocessor): both only read
            main = torch.cuda.current_stream(q.device)
            side = _side_stream(q.device)
            ready = main.record_event()
            Cs, ns, ms, _, _ = chunk_states_fwd(kf, vf, lf, ig, init, L, cfg)
            side.wait_event(ready)
            with torch.cuda.stream(side):
                norm, dden, dm_pos = grad_terms(h, dh, m_pos, den, eps)
            main.wait_stream(side)
            for t in (norm, dden, dm_pos):  # made on the side stream, used and freed on this one
                t.record_stream(main)
        else:
            norm, dden, dm_pos = grad_terms(h, dh, m_pos, den, eps)
            if Cs is None:  # not kept by the forward (ChunkwiseConfig.keep_states): recompute
                Cs, ns, ms, _, _ = chunk_states_fwd(kf, vf, lf, ig, init, L, cfg)
        dCs, dns, dC0, dn0 = chunk_states_bwd(qf, dh, lf, ig, m_pos, norm, dden, ms, dfinal, L, cfg)
        dq, dk, dv, kdk, cross, qa, ke, chunk_shares = chunk_inputs_bwd(
            qf, kf, vf, dh, lf, ig, m_pos, norm, dden, Cs, ns, ms, dCs, dns, L, cfg
        )
        del Cs, dCs
        if fused_glue:
            df, di, dm0 = gate_grads_fused(
                f.reshape(BH, S), ig, m_pos, kdk, cross, qa, ke, dm_pos, chunk_shares, L, final_share, dm_final
            )
        else:
            m_init = init[2].float() if init is not None else torch.zeros(BH, device=q.device)
            dlf, di, dm0 = gate_grads(
                lf, ig, m_init, m_pos, kdk, cross, qa, ke, dm_pos, chunk_shares, L, final_share, dm_final
            )
            df = dlf * torch.sigmoid(-f.float().reshape(BH, S))
        grads_init = (None, None, None)
        if ctx.has_init:
            C0f, n0f = init[0].float(), init[1].float()
            dm0 = dm0 + (C0f * dC0).sum((-2, -1)) + (n0f * dn0).sum(-1)
            grads_init = (
                dC0.view(B, NH, DQK, DV).to(C0.dtype),
                dn0.view(B, NH, DQK).to(n0.dtype),
                dm0.view(B, NH).to(m0.dtype),
            )
        return (
            dq.view_as(q), dk.view_as(k), dv.view_as(v),
            di.view(B, NH, S).to(i.dtype), df.view(B, NH, S).to(f.dtype),
            *grads_init, None,
        )  # fmt: skip


def _validate(q, k, v, i, f, state, chunk_size) -> None:
    name = "mlstm_chunkwise_triton"
    for label, t in (("q", q), ("k", k), ("v", v), ("i", i), ("f", f)):
        check_float(f"{name}: {label}", t)
    if q.dim() != 4:
        raise ValueError(f"{name}: q must be (B, NH, S, DQK), got shape {tuple(q.shape)}")
    B, NH, S, DQK = q.shape
    if v.dim() != 4:
        raise ValueError(f"{name}: v must be (B, NH, S, DV), got shape {tuple(v.shape)}")
    DV = v.shape[-1]
    check_shape(f"{name}: k", k, (B, NH, S, DQK))
    check_shape(f"{name}: v", v, (B, NH, S, DV))
    check_shape(f"{name}: i", i, (B, NH, S))
    check_shape(f"{name}: f", f, (B, NH, S))
    if S == 0:
        raise ValueError(f"{name}: needs at least one token (S = 0)")
    if q.dtype not in KERNEL_DTYPES:
        raise ValueError(f"{name}: q dtype {q.dtype} not supported (float32, bfloat16, float16)")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{name}: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if DQK % 16 or DV % 16:
        raise ValueError(f"{name}: DQK ({DQK}) and DV ({DV}) must be multiples of 16")
    if not (is_pow2(chunk_size) and chunk_size >= 16):
        raise ValueError(f"{name}: chunk_size must be a power of two >= 16, got {chunk_size}")
    if chunk_size > MAX_CUDA_CHUNK and q.device.type == "cuda":
        raise ValueError(
            f"{name}: chunk_size {chunk_size} > {MAX_CUDA_CHUNK} is refused on CUDA: with Triton 3.6 on "
            "an H100 it gave intermittently wrong results (h off by 1-23%); use 16, 32 or 64"
        )
    devices = {t.device for t in (q, k, v, i, f)}
    if state is not None:
        if len(state) != 3:
            raise ValueError(f"{name}: state must be (C, n, m), got {len(state)} tensors")
        C0, n0, m0 = state
        check_shape(f"{name}: state C", C0, (B, NH, DQK, DV))
        check_shape(f"{name}: state n", n0, (B, NH, DQK))
        check_shape(f"{name}: state m", m0, (B, NH))
        for label, t in (("C", C0), ("n", n0), ("m", m0)):
            check_float(f"{name}: state {label}", t)
        devices |= {t.device for t in state}
    if len(devices) != 1:
        raise ValueError(f"{name}: all tensors must be on one device, got {sorted(map(str, devices))}")
    check_triton_device(name, q)


def _check_pipelining(q: Tensor, v: Tensor, config: ChunkwiseConfig) -> None:
    """Refuse num_stages > 2, set in the config, on CUDA when DQK or DV is a single tile of a per-chunk
    kernel (forward or backward): those loops run over a run-time count (forward.py says why), and
    with Triton 3.6 on an H200 such loops pipelined 3 deep gave wrong results (64 / 64 heads: h off by
    9%, dv by 11%; 2026-12-04). A dtype default deeper than 2 is lowered to 2 there instead."""
    DQK, DV = q.shape[-1], v.shape[-1]
    if q.device.type != "cuda":
        return
    for kind in ("output", "bwd"):
        launch, stages_set = _chunk_launch(kind, DQK, DV, config, q.dtype)
        bk, bv = launch.block_k, launch.block_v
        if stages_set and launch.num_stages > 2 and (bk == DQK or bv == DV):
            raise ValueError(
                f"mlstm_chunkwise_triton: num_stages {launch.num_stages} is refused on CUDA when DQK ({DQK}) "
                f"or DV ({DV}) is a single tile (block_k {bk}, block_v {bv}): with Triton 3.6 it gave wrong "
                "results (h off by 9% at 64/64 heads); use num_stages 2 or tiles that split both dims"
            )


def mlstm_chunkwise_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    i: Tensor,
    f: Tensor,
    state: MLSTMState | None = None,
    chunk_size: int = 64,
    return_state: bool = False,
    *,
    eps: float = 1e-6,
    config: ChunkwiseConfig | None = None,
) -> tuple[Tensor, MLSTMState | None]:
    """Chunkwise mLSTM with Triton kernels, differentiable in every input and the initial state.

    q, k (B, NH, S, DQK), v (B, NH, S, DV): float32, bfloat16 or float16 (one dtype); i, f (B, NH, S)
    gate pre-activations (any float dtype; gate and state math runs in float32). state: optional
    initial (C (B,NH,DQK,DV), n (B,NH,DQK), m (B,NH)). DQK, DV multiples of 16; any S >= 1;
    chunk_size a power of two >= 16, at most 64 on CUDA (MAX_CUDA_CHUNK).

    Returns (h, final_state): h (B, NH, S, DV) in q's dtype; final_state (C, n, m) float32 when
    return_state, else None (the return type does not depend on the flag).

    Example:
        >>> h, _ = mlstm_chunkwise_triton(q, k, v, i, f)                       # doctest: +SKIP
        >>> h, (C, n, m) = mlstm_chunkwise_triton(q, k, v, i, f, return_state=True)  # doctest: +SKIP
    """
    _validate(q, k, v, i, f, state, chunk_size)
    config = config or ChunkwiseConfig()
    _check_pipelining(q, v, config)
    settings = _Settings(chunk_size=chunk_size, eps=eps, config=config)
    q, k, v, i, f = (t.contiguous() for t in (q, k, v, i, f))
    C0 = n0 = m0 = None
    if state is not None:
        C0, n0, m0 = (s.float().contiguous() for s in state)
    h, C, n, m = MLSTMChunkwiseFunction.apply(q, k, v, i, f, C0, n0, m0, settings)
    return h, ((C, n, m) if return_state else None)
