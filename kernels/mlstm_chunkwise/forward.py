"""Chunkwise mLSTM forward in Triton: an inter-chunk state pass, then a parallel intra-chunk pass.

Shapes (BH = B * NH flattened, S sequence, L chunk size, NC = ceil(S / L) chunks):
    q, k (BH, S, DQK)   v (BH, S, DV)   lf = logsigmoid(f~), ig = i~: (BH, S) float32
    chunk-start states  Cs (BH, NC, DQK, DV) in q's dtype,  ns (BH, NC, DQK), ms (BH, NC + 1) float32
    outputs             h (BH, S, DV) in q's dtype, per-position stabilizer m and denominator den (BH, S)
Equations: ../shared/XLSTM_MATH.md (chunkwise form). Positions past S are padding: their input gate
is -inf and their log forget gate 0, so they leave the state untouched; their outputs are not stored.

Level 1 (`_fwd_states_kernel`): one program per (DQK tile, DV tile, BH) walks the chunks in order,
keeps its C tile in float32 registers, and writes the state at the start of every chunk (plus the
final state). Level 2 (`_fwd_output_kernel`): one program per (chunk, BH), all chunks in parallel:
the causal L x L part plus the inter-chunk part q C_k, normalised.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..common import dot_precision, pick_block


@dataclass(frozen=True)
class ChunkwiseConfig:
    """Tile sizes and launch settings of the four kernels (the chunk size itself is an argument of the
    op). 0 everywhere means "the default for q's dtype" (LAUNCH_DEFAULTS); a field set here wins.

    block_k / block_v: DQK / DV tiles of the forward per-chunk kernel (0 = the dtype's default, else
    the largest of 64, 32, 16 that divides the dim); block_k_bwd / block_v_bwd: the same for the
    backward per-chunk kernel. block_k_states / block_v_states: tiles of the sequential state kernels
    (forward, and backward unless block_k_states_bwd / block_v_states_bwd are set; 0 = start at the dtype's default (16-bit 64 x 128, float32 128 x 128) and halve the larger, down to 32, while there are
    fewer programs than 3/4 of the multiprocessors: long sequences at small batch otherwise leave most
    of the GPU idle in the state pass; larger tiles re-read k and v fewer times. On an H100 at 65k
    tokens, S 8k: 7B heads, 128 x 128 took the state kernels from 4.4 + 2.6 ms (64 x 128) to 2.8 + 2.0
    ms; 16 heads of 128/128, 128 programs of 128 x 128 beat 512 of 64 x 64, 1.1 + 0.6 ms against 1.4 +
    0.9 ms). num_warps_states / num_warps_states_bwd: warps of the forward / backward state kernel
    (0 = the dtype's default, else 8 for 64 x 128 tiles and up, 4 below); num_warps_output /
    num_warps_bwd: warps of the forward / backward per-chunk kernel (0 = the dtype's default; with 4
    the float32-era backward kernel spilled at DQK 256 / DV 512 / L 64).
    num_stages: software pipelining depth of every kernel whose own field (num_stages_bwd,
    num_stages_states, num_stages_states_bwd) is 0; 0 = the dtype's default per kernel. 3 ran 7-11%
    faster at 7B heads (H100, H200) but, with Triton 3.6 at L = 128, gave wrong bfloat16 outputs (h
    off by 15%) and ran out of shared memory in float32, and with a one-tile DQK or DV (a loop over a
    run-time count, see _fwd_output_kernel) gave wrong results at 64/64 heads: the op refuses a
    per-chunk depth above 2 set here for such dims on CUDA, and a dtype default above 2 is lowered to 2
    there. bench/kernels.py and bench/tune_chunkwise.py check every configuration they time.
    keep_states: keep the forward's chunk-start states (Cs, ns, ms) for the backward instead of
    recomputing them there (False, the default, as NX-AI's kernels): saves one forward state pass per
    backward at the cost of Cs's memory until the backward, B * NH * ceil(S / L) * DQK * DV elements in
    q's dtype (xLSTM 7B heads, B 8, S 8192, L 64: 2.1 GB a layer; the `small` preset at 16 x 2048:
    75 MB a layer). The saved states are the recomputed ones bit for bit (same kernel, same launch).
    fused_forward: one kernel for the whole forward (`_fwd_fused_kernel`: each program owns a DV tile
    of one head and walks the chunks carrying C in registers, so the chunk-start states never go
    through memory) instead of the state kernel then the output kernel; None = `use_fused_forward`'s
    rule by dtype and shape. block_v_fused / num_warps_fused / num_stages_fused: its DV tile, warps
    and pipelining depth (0 = LAUNCH_DEFAULTS' "fused" entry). With keep_states the fused kernel
    also writes Cs, ns for the backward (not bit-identical to the state kernel's: other tiles).
    """

    block_k: int = 0
    block_v: int = 0
    block_k_states: int = 0
    block_v_states: int = 0
    num_warps_states: int = 0
    num_warps_output: int = 0
    num_stages: int = 0
    block_k_bwd: int = 0
    block_v_bwd: int = 0
    num_warps_bwd: int = 0
    num_stages_bwd: int = 0
    num_stages_states: int = 0
    num_warps_states_bwd: int = 0
    num_stages_states_bwd: int = 0
    block_k_states_bwd: int = 0
    block_v_states_bwd: int = 0
    keep_states: bool = False
    fused_forward: bool | None = None
    block_v_fused: int = 0
    num_warps_fused: int = 0
    num_stages_fused: int = 0


@dataclass(frozen=True)
class Launch:
    """One kernel's resolved launch: tiles (0 for the state kernels: picked by pick_state_launch),
    warps (0: by tile size), pipelining depth."""

    block_k: int
    block_v: int
    num_warps: int
    num_stages: int
    maxnreg: int = 0  # a cap on registers per thread (Triton's maxnreg), 0: none

    def kwargs(self) -> dict[str, int]:
        """Triton launch options: warps, stages and, when set, the register cap."""
        kw = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.maxnreg:
            kw["maxnreg"] = self.maxnreg
        return kw


# What ChunkwiseConfig's zeros resolve to, per kernel, by q's dtype: (block_k, block_v, warps, stages).
# float32 keeps the launch verified since issue 3 (64-wide tiles, 8 warps, 2 stages everywhere): a
# launch tuned for bfloat16 needs twice the shared memory per stage in float32 (one such launch asked
# for 304 KB and the float32 tests failed with it, di off by 1.1e-5), so 16-bit tuning never reaches
# float32. "16bit": bfloat16 and float16: the per-chunk kernels with 128-wide DV tiles, 8 warps, 3
# stages (depth 2 where DQK or DV is one tile); the state kernels with 64 x 128 tiles, 4 warps, 2
# stages (bench/tune_chunkwise.py on an H100, 2026-12-07, 7B heads, S 8192: forward state kernel 2.14
# -> 1.67 ms, backward 2.35 -> 1.90 ms against 128 x 128 tiles, 8 warps, 3 stages, whose 255-register
# programs ran one 8-warp block per multiprocessor; fwd+bwd and the GPU tests: bench/results/kernels.md).
# Not taken (H100, 2026-12-07, bench/results/kernels.md): the output kernel capped at 128 registers a
# thread (Launch.maxnreg; 151 uncapped, no spills at the cap) so that two 8-warp blocks share a
# multiprocessor: 1.60 -> 1.50 ms at 7B heads, S 8192 with 2 stages, but in one plain GPU test run h
# came out 1.09e-2 from float64 at the `grid` shape (64/128 heads, bf16; 2.4e-3 in every other run);
# with 3 stages 1.39 ms and h 1.3e-2 from the uncapped launch's at 7B heads.
LAUNCH_DEFAULTS: dict[str, dict[str, Launch]] = {
    "float32": {
        "output": Launch(0, 0, 8, 2),
        "bwd": Launch(0, 0, 8, 2),
        "states": Launch(0, 0, 0, 2),
        "states_bwd": Launch(0, 0, 0, 2),
        "fused": Launch(0, 32, 8, 1),
    },
    "16bit": {
        "output": Launch(64, 128, 8, 3),
        "bwd": Launch(64, 128, 8, 3),
        "states": Launch(64, 128, 4, 2),
        "states_bwd": Launch(64, 128, 4, 2),
        "fused": Launch(0, 64, 8, 2),
    },
}

# Whether the fused forward is the default, by q's dtype (ChunkwiseConfig.fused_forward overrides).
FUSED_FORWARD_DEFAULT: dict[str, bool] = {"float32": False, "16bit": False}
# The fused kernel holds a (DQK padded to a power of two) x BV float32 state and L x DQK q, k tiles
# in one program: above this DQK it is never chosen by default.
FUSED_MAX_DQK = 256


# A tuning hook, read once at import: XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT='{"bwd": [64, 128, 8, 3], ...}'
# replaces 16-bit entries of LAUNCH_DEFAULTS (bench/gpu_tune.sh runs the GPU tests and memcheck with a
# sweep's result this way, in the same call, before the result is written in above). float32 never.
_LAUNCH_OVERRIDE = os.environ.get("XLSTM_EDGE_CHUNKWISE_LAUNCH_16BIT", "")
if _LAUNCH_OVERRIDE:
    LAUNCH_DEFAULTS["16bit"] = {
        **LAUNCH_DEFAULTS["16bit"],
        **{kind: Launch(*map(int, v)) for kind, v in json.loads(_LAUNCH_OVERRIDE).items()},
    }


def _defaults(dtype: torch.dtype) -> dict[str, Launch]:
    return LAUNCH_DEFAULTS["float32" if dtype == torch.float32 else "16bit"]


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 1  # the interpreter: any grid will do
    return torch.cuda.get_device_properties(device).multi_processor_count


def _chunk_launch(
    kind: str, dqk: int, dv: int, config: ChunkwiseConfig, dtype: torch.dtype
) -> tuple[Launch, bool]:
    """(launch, stages_set) of a per-chunk kernel ("output" or "bwd"); stages_set: the depth came from
    the config (refused above 2 on CUDA for one-tile dims) rather than from the dtype's default
    (lowered to 2 there)."""
    d = _defaults(dtype)[kind]
    if kind == "output":
        bk, bv, warps, stages = config.block_k, config.block_v, config.num_warps_output, config.num_stages
    else:
        bk = config.block_k_bwd or config.block_k
        bv = config.block_v_bwd or config.block_v
        warps = config.num_warps_bwd or config.num_warps_output
        stages = config.num_stages_bwd or config.num_stages
    bk = bk or (d.block_k if d.block_k and dqk % d.block_k == 0 else pick_block(dqk))
    bv = bv or (d.block_v if d.block_v and dv % d.block_v == 0 else pick_block(dv))
    if dqk % bk or dv % bv:
        raise ValueError(f"tiles ({bk}, {bv}) must divide (DQK {dqk}, DV {dv})")
    stages_set = bool(stages)
    if not stages:
        stages = d.num_stages if (bk < dqk and bv < dv) else min(d.num_stages, 2)
    return Launch(bk, bv, warps or d.num_warps, stages, d.maxnreg), stages_set


def output_launch(dqk: int, dv: int, config: ChunkwiseConfig, dtype: torch.dtype) -> Launch:
    """Launch of the forward per-chunk kernel."""
    return _chunk_launch("output", dqk, dv, config, dtype)[0]


def bwd_launch(dqk: int, dv: int, config: ChunkwiseConfig, dtype: torch.dtype) -> Launch:
    """Launch of the backward per-chunk kernel."""
    return _chunk_launch("bwd", dqk, dv, config, dtype)[0]


def pick_blocks(dqk: int, dv: int, config: ChunkwiseConfig, dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """(BK, BV) of the forward per-chunk kernel."""
    launch = output_launch(dqk, dv, config, dtype)
    return launch.block_k, launch.block_v


# shared-memory budget of one state-kernel program's pipelined k / v chunk tiles (the H100 has 227 KB
# a block; float32 128 x 128 tiles at L = 128, two stages, need 257 KB and fail to compile)
STATE_SMEM_BUDGET = 200 * 1024


def pick_state_launch(
    bh: int, dqk: int, dv: int, config: ChunkwiseConfig, device: torch.device,
    chunk_size: int = 64, elem_bytes: int = 2, backward: bool = False,
) -> tuple[int, int, int]:  # fmt: skip
    """(BK, BV, num_warps) of the state kernels, whose grid is (DQK/BK, DV/BV, B*NH)."""
    launch = state_launch(bh, dqk, dv, config, device, chunk_size, elem_bytes, backward)
    return launch.block_k, launch.block_v, launch.num_warps


def state_launch(
    bh: int, dqk: int, dv: int, config: ChunkwiseConfig, device: torch.device,
    chunk_size: int = 64, elem_bytes: int = 2, backward: bool = False,
) -> Launch:  # fmt: skip
    """Launch of the forward (or backward) state kernel; elem_bytes: q's element size (4: float32)."""
    d = _defaults(torch.float32 if elem_bytes == 4 else torch.bfloat16)["states_bwd" if backward else "states"]
    if backward:
        stages = config.num_stages_states_bwd or config.num_stages or d.num_stages
        warps = config.num_warps_states_bwd or config.num_warps_states or d.num_warps
    else:
        stages = config.num_stages_states or config.num_stages or d.num_stages
        warps = config.num_warps_states or d.num_warps
    set_k, set_v = config.block_k_states, config.block_v_states
    if backward:
        set_k, set_v = config.block_k_states_bwd or set_k, config.block_v_states_bwd or set_v
    bk = set_k or pick_block(dqk, d.block_k or 128)
    bv = set_v or pick_block(dv, d.block_v or 128)
    if not (set_k and set_v):

        def smem(bk: int, bv: int) -> int:
            return chunk_size * (bk + bv) * elem_bytes * max(stages, 1)

        target = 3 * _multiprocessors(device) // 4
        while bh * (dqk // bk) * (dv // bv) < target or smem(bk, bv) > STATE_SMEM_BUDGET:
            can_v = not set_v and bv > 32
            can_k = not set_k and bk > 32
            if can_v and (bv >= bk or not can_k):
                bv //= 2
            elif can_k:
                bk //= 2
            else:
                break
    if dqk % bk or dv % bv:
        raise ValueError(f"state tiles ({bk}, {bv}) must divide (DQK {dqk}, DV {dv})")
    warps = warps or (8 if bk * bv >= 64 * 128 else 4)
    return Launch(bk, bv, warps, stages, d.maxnreg)


@triton.jit
def _state_update_weights(b, g, ig, m):
    """A chunk's contribution to the state at its end: ``b`` (L,) cumulative log forget gates, ``g`` ()
    their sum, ``ig`` (L,) input gates, ``m`` () the stabilizer at the chunk's start. Returns the weight
    of each token's k v^T (L,), the decay of the carried state () and the new stabilizer ()."""
    a = g - b + ig  # log weight of token j in the state at the chunk's end
    m_next = tl.maximum(g + m, tl.max(a, axis=0))
    return tl.exp(a - m_next), tl.exp(g + m - m_next), m_next


@triton.jit
def _output_weights(scores, qn, b, ig, m_k, causal, eps):
    """One chunk's output weights: ``scores`` (L, L) scaled q k^T, ``qn`` (L,) scaled q . n at the chunk's
    start, ``b``, ``ig`` as in ``_state_update_weights``, ``m_k`` () the chunk-start stabilizer,
    ``causal`` (L, L). Returns the stabilized intra-chunk weights p (L, L), the inter-chunk factor alpha
    (L,), the denominator (L,), the normalizer max(|den|, exp(-m)) + eps (L,) and the running stabilizer
    m (L,), equal to the step form's m_t."""
    log_d = tl.where(causal, b[:, None] - b[None, :] + ig[None, :], float("-inf"))
    m_inter = b + m_k
    m_pos = tl.maximum(m_inter, tl.max(log_d, axis=1))
    p = scores * tl.exp(log_d - m_pos[:, None])
    alpha = tl.exp(m_inter - m_pos)
    den = tl.sum(p, axis=1) + alpha * qn
    norm = tl.maximum(tl.abs(den), tl.exp(-m_pos)) + eps
    return p, alpha, den, norm, m_pos


@triton.jit
def _fwd_states_kernel(
    k_ptr, v_ptr, lf_ptr, ig_ptr,
    C0_ptr, n0_ptr, m0_ptr,
    Cs_ptr, ns_ptr, ms_ptr,
    Cf_ptr, nf_ptr,
    S, NC,
    L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_INIT: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    pk = tl.program_id(0)
    pv = tl.program_id(1)
    bh = tl.program_id(2).to(tl.int64)
    offs_k = pk * BK + tl.arange(0, BK)
    offs_v = pv * BV + tl.arange(0, BV)
    offs_t = tl.arange(0, L)
    c_tile = offs_k[:, None] * DV + offs_v[None, :]
    if HAS_INIT:
        C = tl.load(C0_ptr + bh * DQK * DV + c_tile).to(tl.float32)
        n = tl.load(n0_ptr + bh * DQK + offs_k).to(tl.float32)
        m = tl.load(m0_ptr + bh).to(tl.float32)
    else:
        C = tl.zeros((BK, BV), dtype=tl.float32)
        n = tl.zeros((BK,), dtype=tl.float32)
        m = tl.full((), 0.0, tl.float32)
    for c in range(NC):
        # the state at the start of chunk c
        tl.store(Cs_ptr + (bh * NC + c) * DQK * DV + c_tile, C.to(Cs_ptr.dtype.element_ty))
        if pv == 0:
            tl.store(ns_ptr + (bh * NC + c) * DQK + offs_k, n)
        if (pk == 0) & (pv == 0):
            tl.store(ms_ptr + bh * (NC + 1) + c, m)
        t = c * L + offs_t
        mask_t = t < S
        lf = tl.load(lf_ptr + bh * S + t, mask=mask_t, other=0.0)
        ig = tl.load(ig_ptr + bh * S + t, mask=mask_t, other=float("-inf"))
        b = tl.cumsum(lf, axis=0)
        g = tl.sum(lf, axis=0)
        w, decay, m_next = _state_update_weights(b, g, ig, m)
        kc = tl.load(k_ptr + (bh * S + t[:, None]) * DQK + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        vc = tl.load(v_ptr + (bh * S + t[:, None]) * DV + offs_v[None, :], mask=mask_t[:, None], other=0.0)
        kw = kc.to(tl.float32) * w[:, None]
        # the chunk's update in its own accumulator, not fused into C's: with C as the dot's
        # accumulator, Triton 3.6 on an H100 gave wrong chunk-start states at L 128, 128 x 128 tiles
        upd = tl.dot(tl.trans(kw.to(kc.dtype)), vc, input_precision=DOT_PREC)
        C = decay * C + upd
        n = decay * n + tl.sum(kw, axis=0)
        m = m_next
    tl.store(Cf_ptr + bh * DQK * DV + c_tile, C)
    if pv == 0:
        tl.store(nf_ptr + bh * DQK + offs_k, n)
    if (pk == 0) & (pv == 0):
        tl.store(ms_ptr + bh * (NC + 1) + NC, m)


# NK = DQK / BK and NV = DV / BV, run-time arguments of the per-chunk kernels, never specialised: a
# dim of one tile loops over NK (or NV) = 1 unknown at compile time, so its loop stays a loop; a dim of
# several tiles loops over the constant DQK // BK as before. With a constant count of 1 (DQK == BK or
# DV == BV, e.g. the demo model's 32 / 64 heads) the loop is folded away, and Triton 3.6 then sees an
# L x L product feeding another product in straight-line code: its chained-dot rule ("all warps along
# M", warpsPerTileV3) puts 8 warps, two warpgroups, on a 64-row wgmma tile, and the second
# warpgroup's shared-memory operand descriptors point 64 rows past the 64 x 32 q / k tile: an
# out-of-range shared read on an H200 (compute-sanitizer: HGMMA.64x32x16 by threads 128..255) or
# another buffer's data (dv wrong by 130% where it did not crash). Inside a loop the rule does not
# fire (a forward slice stops at scf.yield). Run-time counts for every dim were tried and rejected:
# with num_stages=3 they gave wrong h and gradients at 7B heads (h off by 5%), constant counts do not.
@triton.jit(do_not_specialize=["NK", "NV"])
def _fwd_output_kernel(
    q_ptr, k_ptr, v_ptr, lf_ptr, ig_ptr,
    Cs_ptr, ns_ptr, ms_ptr,
    h_ptr, mpos_ptr, den_ptr,
    S, NC, scale, eps, NK, NV,
    L: tl.constexpr, DQK: tl.constexpr, DV: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    DOT_PREC: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_t = tl.arange(0, L)
    t = c * L + offs_t
    mask_t = t < S
    lf = tl.load(lf_ptr + bh * S + t, mask=mask_t, other=0.0)
    ig = tl.load(ig_ptr + bh * S + t, mask=mask_t, other=float("-inf"))
    b = tl.cumsum(lf, axis=0)
    m_k = tl.load(ms_ptr + bh * (NC + 1) + c)
    state_base = (bh * NC + c) * DQK

    n_kt = NK if DQK == BK else DQK // BK  # a one-tile dim loops over a run-time count
    n_vt = NV if DV == BV else DV // BV

    # scores q k^T and q . n_k, reduced over DQK tiles
    scores = tl.zeros((L, L), dtype=tl.float32)
    qn = tl.zeros((L,), dtype=tl.float32)
    for kt in range(n_kt):
        offs_k = kt * BK + tl.arange(0, BK)
        qt = tl.load(q_ptr + (bh * S + t[:, None]) * DQK + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        kk = tl.load(k_ptr + (bh * S + t[:, None]) * DQK + offs_k[None, :], mask=mask_t[:, None], other=0.0)
        scores += tl.dot(qt, tl.trans(kk), input_precision=DOT_PREC)
        nk = tl.load(ns_ptr + state_base + offs_k)
        qn += tl.sum(qt.to(tl.float32) * nk[None, :], axis=1)
    scores = scores * scale
    qn = qn * scale

    # decay matrix and the running stabilizer (equal to the step form's m_t)
    causal = offs_t[:, None] >= offs_t[None, :]
    p, alpha, den, norm, m_pos = _output_weights(scores, qn, b, ig, m_k, causal, eps)
    tl.store(mpos_ptr + bh * S + t, m_pos, mask=mask_t)
    tl.store(den_ptr + bh * S + t, den, mask=mask_t)

    p = p.to(v_ptr.dtype.element_ty)
    inter_scale = alpha * scale
    for vt in range(n_vt):
        offs_v = vt * BV + tl.arange(0, BV)
        vv = tl.load(v_ptr + (bh * S + t[:, None]) * DV + offs_v[None, :], mask=mask_t[:, None], other=0.0)
        acc = tl.dot(p, vv, input_precision=DOT_PREC)
        qc = tl.zeros((L, BV), dtype=tl.float32)
        for kt in range(n_kt):
            offs_k = kt * BK + tl.arange(0, BK)
            qt = tl.load(
                q_ptr + (bh * S + t[:, None]) * DQK + offs_k[None, :], mask=mask_t[:, None], other=0.0
            )
            ct = tl.load(Cs_ptr + (state_base + offs_k[:, None]) * DV + offs_v[None, :])
            qc += tl.dot(qt, ct, input_precision=DOT_PREC)
        acc += inter_scale[:, None] * qc
        h = acc / norm[:, None]
        tl.store(
            h_ptr + (bh * S + t[:, None]) * DV + offs_v[None, :],
            h.to(h_ptr.dtype.element_ty),
            mask=mask_t[:, None],
        )


# One program per (DV tile, B*NH) walks the chunks in order carrying its C tile (all of DQK, padded to
# a power of two DKP, x BV) in float32 registers, n and m beside it: each chunk's output takes the
# inter-chunk part q C from the registers, so the chunk-start states Cs (2.1 GB at 7B heads, 65k
# tokens, bf16) are neither written nor read back (flash-linear-attention's "fused_chunk" layout).
# Every DV tile of a head recomputes that head's L x L scores, stabilizer and denominator (same inputs,
# same arithmetic: equal across tiles); the first tile stores m and den. The product q C rounds C to
# q's dtype first, as the two-kernel path does by storing Cs in q's dtype.
@triton.jit
def _fwd_fused_kernel(
    q_ptr, k_ptr, v_ptr, lf_ptr, ig_ptr,
    C0_ptr, n0_ptr, m0_ptr,
    h_ptr, mpos_ptr, den_ptr,
    Cs_ptr, ns_ptr, ms_ptr, Cf_ptr, nf_ptr,
    S, NC, scale, eps,
    L: tl.constexpr, DQK: tl.constexpr, DKP: tl.constexpr, DV: tl.constexpr, BV: tl.constexpr,
    HAS_INIT: tl.constexpr, STORE_STATES: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    pv = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    offs_k = tl.arange(0, DKP)
    mask_k = offs_k < DQK
    offs_v = pv * BV + tl.arange(0, BV)
    offs_t = tl.arange(0, L)
    c_tile = offs_k[:, None] * DV + offs_v[None, :]
    if HAS_INIT:
        C = tl.load(C0_ptr + bh * DQK * DV + c_tile, mask=mask_k[:, None], other=0.0).to(tl.float32)
        n = tl.load(n0_ptr + bh * DQK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        m = tl.load(m0_ptr + bh).to(tl.float32)
    else:
        C = tl.zeros((DKP, BV), dtype=tl.float32)
        n = tl.zeros((DKP,), dtype=tl.float32)
        m = tl.full((), 0.0, tl.float32)
    causal = offs_t[:, None] >= offs_t[None, :]
    for c in range(NC):
        if pv == 0:
            tl.store(ms_ptr + bh * (NC + 1) + c, m)
        if STORE_STATES:
            tl.store(Cs_ptr + (bh * NC + c) * DQK * DV + c_tile, C.to(Cs_ptr.dtype.element_ty), mask=mask_k[:, None])
            if pv == 0:
                tl.store(ns_ptr + (bh * NC + c) * DQK + offs_k, n, mask=mask_k)
        t = c * L + offs_t
        mask_t = t < S
        lf = tl.load(lf_ptr + bh * S + t, mask=mask_t, other=0.0)
        ig = tl.load(ig_ptr + bh * S + t, mask=mask_t, other=float("-inf"))
        b = tl.cumsum(lf, axis=0)
        g = tl.sum(lf, axis=0)
        mask_tk = mask_t[:, None] & mask_k[None, :]
        qt = tl.load(q_ptr + (bh * S + t[:, None]) * DQK + offs_k[None, :], mask=mask_tk, other=0.0)
        kt = tl.load(k_ptr + (bh * S + t[:, None]) * DQK + offs_k[None, :], mask=mask_tk, other=0.0)
        vt = tl.load(v_ptr + (bh * S + t[:, None]) * DV + offs_v[None, :], mask=mask_t[:, None], other=0.0)

        # output: the causal L x L part plus the inter-chunk part from the state in registers
        scores = tl.dot(qt, tl.trans(kt), input_precision=DOT_PREC) * scale
        qn = tl.sum(qt.to(tl.float32) * n[None, :], axis=1) * scale
        p, alpha, den, norm, m_pos = _output_weights(scores, qn, b, ig, m, causal, eps)
        if pv == 0:
            tl.store(mpos_ptr + bh * S + t, m_pos, mask=mask_t)
            tl.store(den_ptr + bh * S + t, den, mask=mask_t)
        acc = tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PREC)
        qc = tl.dot(qt, C.to(qt.dtype), input_precision=DOT_PREC)
        acc += (alpha * scale)[:, None] * qc
        h = acc / norm[:, None]
        tl.store(
            h_ptr + (bh * S + t[:, None]) * DV + offs_v[None, :], h.to(h_ptr.dtype.element_ty), mask=mask_t[:, None]
        )

        # the state at the chunk's end (as _fwd_states_kernel)
        w, decay, m_next = _state_update_weights(b, g, ig, m)
        kw = kt.to(tl.float32) * w[:, None]
        upd = tl.dot(tl.trans(kw.to(kt.dtype)), vt, input_precision=DOT_PREC)
        C = decay * C + upd
        n = decay * n + tl.sum(kw, axis=0)
        m = m_next
    tl.store(Cf_ptr + bh * DQK * DV + c_tile, C, mask=mask_k[:, None])
    if pv == 0:
        tl.store(nf_ptr + bh * DQK + offs_k, n, mask=mask_k)
        tl.store(ms_ptr + bh * (NC + 1) + NC, m)


def fused_launch(dv: int, config: ChunkwiseConfig, dtype: torch.dtype) -> Launch:
    """Launch of `_fwd_fused_kernel` (block_k unused: the program holds all of DQK)."""
    d = _defaults(dtype)["fused"]
    bv = config.block_v_fused or (d.block_v if dv % d.block_v == 0 else pick_block(dv, d.block_v))
    if dv % bv:
        raise ValueError(f"fused DV tile {bv} must divide DV {dv}")
    return Launch(0, bv, config.num_warps_fused or d.num_warps, config.num_stages_fused or d.num_stages)


def use_fused_forward(dqk: int, dv: int, config: ChunkwiseConfig, dtype: torch.dtype) -> bool:
    """Whether the forward runs `_fwd_fused_kernel`: ChunkwiseConfig.fused_forward when set; else the
    dtype's FUSED_FORWARD_DEFAULT for DQK <= FUSED_MAX_DQK without keep_states (the kept states of
    the two-kernel path are what its backward recomputes, bit for bit)."""
    if config.fused_forward is not None:
        return config.fused_forward
    key = "float32" if dtype == torch.float32 else "16bit"
    return FUSED_FORWARD_DEFAULT[key] and dqk <= FUSED_MAX_DQK and not config.keep_states


def chunk_fused_fwd(
    q: Tensor, k: Tensor, v: Tensor, lf: Tensor, ig: Tensor, init: tuple[Tensor, Tensor, Tensor] | None,
    chunk_size: int, eps: float, config: ChunkwiseConfig, store_states: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:  # fmt: skip
    """The whole forward in one kernel. q, k (BH,S,DQK), v (BH,S,DV), lf/ig (BH,S) fp32, init
    (C0,n0,m0) fp32 or None.

    Returns h (BH,S,DV) in q's dtype, m and den per position (BH,S) float32, final C (BH,DQK,DV) and
    n (BH,DQK) float32, ms (BH,NC+1) float32 (m at each chunk's start, then the final m), and, with
    store_states, Cs (BH,NC,DQK,DV) in q's dtype and ns (BH,NC,DQK) float32 (else None, None).
    """
    BH, S, DQK = q.shape
    DV = v.shape[-1]
    NC = triton.cdiv(S, chunk_size)
    launch = fused_launch(DV, config, q.dtype)
    dev = q.device
    h = torch.empty(BH, S, DV, device=dev, dtype=q.dtype)
    m_pos = torch.empty(BH, S, device=dev, dtype=torch.float32)
    den = torch.empty(BH, S, device=dev, dtype=torch.float32)
    ms = torch.empty(BH, NC + 1, device=dev, dtype=torch.float32)
    Cf = torch.empty(BH, DQK, DV, device=dev, dtype=torch.float32)
    nf = torch.empty(BH, DQK, device=dev, dtype=torch.float32)
    Cs = ns = None
    if store_states:
        Cs = torch.empty(BH, NC, DQK, DV, device=dev, dtype=q.dtype)
        ns = torch.empty(BH, NC, DQK, device=dev, dtype=torch.float32)
    C0, n0, m0 = init if init is not None else (Cf, nf, ms)  # unused pointers when HAS_INIT is off
    _fwd_fused_kernel[(DV // launch.block_v, BH)](
        q, k, v, lf, ig, C0, n0, m0, h, m_pos, den,
        Cs if store_states else Cf, ns if store_states else nf, ms, Cf, nf,
        S, NC, DQK**-0.5, eps,
        L=chunk_size, DQK=DQK, DKP=triton.next_power_of_2(DQK), DV=DV, BV=launch.block_v,
        HAS_INIT=init is not None, STORE_STATES=store_states, DOT_PREC=dot_precision(q.dtype),
        num_warps=launch.num_warps, num_stages=launch.num_stages,
    )  # fmt: skip
    return h, m_pos, den, Cf, nf, ms, Cs, ns


def chunk_states_fwd(
    k: Tensor, v: Tensor, lf: Tensor, ig: Tensor, init: tuple[Tensor, Tensor, Tensor] | None,
    chunk_size: int, config: ChunkwiseConfig,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """Level 1. k (BH,S,DQK), v (BH,S,DV), lf/ig (BH,S) fp32, init (C0,n0,m0) fp32 or None.

    Returns Cs (BH,NC,DQK,DV) in k's dtype, ns (BH,NC,DQK), ms (BH,NC+1), final C (BH,DQK,DV) and
    final n (BH,DQK) in float32 (the final m is ms[:, NC]).
    """
    BH, S, DQK = k.shape
    DV = v.shape[-1]
    NC = triton.cdiv(S, chunk_size)
    launch = state_launch(BH, DQK, DV, config, k.device, chunk_size, k.element_size())
    BK, BV = launch.block_k, launch.block_v
    dev = k.device
    Cs = torch.empty(BH, NC, DQK, DV, device=dev, dtype=k.dtype)
    ns = torch.empty(BH, NC, DQK, device=dev, dtype=torch.float32)
    ms = torch.empty(BH, NC + 1, device=dev, dtype=torch.float32)
    Cf = torch.empty(BH, DQK, DV, device=dev, dtype=torch.float32)
    nf = torch.empty(BH, DQK, device=dev, dtype=torch.float32)
    C0, n0, m0 = init if init is not None else (Cf, nf, ms)  # unused pointers when HAS_INIT is off
    grid = (DQK // BK, DV // BV, BH)
    _fwd_states_kernel[grid](
        k, v, lf, ig, C0, n0, m0, Cs, ns, ms, Cf, nf, S, NC,
        L=chunk_size, DQK=DQK, DV=DV, BK=BK, BV=BV, HAS_INIT=init is not None,
        DOT_PREC=dot_precision(k.dtype), **launch.kwargs(),
    )  # fmt: skip
    return Cs, ns, ms, Cf, nf


def chunk_output_fwd(
    q: Tensor, k: Tensor, v: Tensor, lf: Tensor, ig: Tensor, Cs: Tensor, ns: Tensor, ms: Tensor,
    chunk_size: int, eps: float, config: ChunkwiseConfig,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Level 2. Returns h (BH,S,DV) in q's dtype, m and den per position (BH,S) float32."""
    BH, S, DQK = q.shape
    DV = v.shape[-1]
    NC = Cs.shape[1]
    launch = output_launch(DQK, DV, config, q.dtype)
    BK, BV = launch.block_k, launch.block_v
    h = torch.empty(BH, S, DV, device=q.device, dtype=q.dtype)
    m_pos = torch.empty(BH, S, device=q.device, dtype=torch.float32)
    den = torch.empty(BH, S, device=q.device, dtype=torch.float32)
    _fwd_output_kernel[(NC, BH)](
        q, k, v, lf, ig, Cs, ns, ms, h, m_pos, den, S, NC, DQK**-0.5, eps, DQK // BK, DV // BV,
        L=chunk_size, DQK=DQK, DV=DV, BK=BK, BV=BV, DOT_PREC=dot_precision(q.dtype), **launch.kwargs(),
    )  # fmt: skip
    return h, m_pos, den
