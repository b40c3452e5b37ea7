"""The Triton kernels on a GPU against float64 references: bfloat16 within 1e-2, float32 within 1e-5
(outputs, final state, every gradient; the chunkwise gradients against the float64 backward at the
kernel's own h, tests/kernels/metrics.py says why). The shapes users train (TRAIN_SHAPES: the presets, xLSTM 7B
heads, the demo model, odd S, S below a chunk, a full grid), and the kernels' refusals. Needs CUDA.
bench/gpu_memcheck.sh runs this file under compute-sanitizer's memcheck."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import rel_err
from tests.kernels.metrics import chunkwise_errors, grad_failures, model_shape_errors
from xlstm_edge.mlstm import mlstm_step
from xlstm_edge.slstm import slstm_scan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-5}
DEV = "cuda"


def _report(label, errs, tol):
    """Print every figure; return the bounded ones above tol (reported "... (...)" entries excluded)."""
    print(f"\n{label}: " + " ".join(f"{k}={v:.2e}" for k, v in errs.items()))
    return grad_failures(errs, tol)


@pytest.mark.parametrize("state_tiles", [(0, 0), (128, 128)])
@pytest.mark.parametrize("chunk_size", [32, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunkwise_7b_heads(seed, dtype, chunk_size, state_tiles):
    """state_tiles (0, 0): automatic (small here: B * NH = 8 programs per tile); (128, 128): the tiles
    that the automatic choice takes at training batch sizes."""
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig

    config = ChunkwiseConfig(block_k_states=state_tiles[0], block_v_states=state_tiles[1])
    errs = chunkwise_errors((2, 4, 333, 256, 512), dtype, chunk_size, DEV, config)
    bad = _report(f"chunkwise {dtype} L={chunk_size} state tiles {state_tiles}", errs, TOL[dtype])
    assert not bad, (seed, bad)


# shapes that users train (presets: xlstm_edge/config.py), chunk size as the model uses it
TRAIN_SHAPES = {
    "demo": (64, 2, 256, 32, 64, 64),  # the demo model (D 128, 2 heads), batch 64 x 256: crashed before
    "tiny": (8, 2, 72, 16, 32, 16),  # tiny / tiny-ms (D 64, 2 heads, chunk 16), a padded last chunk
    "tiny-S<chunk": (4, 2, 11, 16, 32, 16),
    "small": (2, 4, 300, 96, 192, 64),  # the `small` preset's heads, a padded last chunk
    "7b": (1, 8, 333, 256, 512, 64),  # xLSTM 7B heads, odd S
    "128/128": (2, 4, 200, 128, 128, 64),  # the benchmark's second head shape
    "64/64": (4, 4, 130, 64, 64, 64),  # one tile in both dims (as the demo), odd S
    "S<chunk": (3, 2, 40, 32, 64, 64),
    "S=1": (2, 2, 1, 32, 64, 64),
    "L32": (4, 2, 100, 32, 64, 32),
    "grid": (32, 8, 256, 64, 128, 64),  # B * NH = 256 programs per chunk, state kernels at 128 x 128
}


@pytest.mark.parametrize("shape", list(TRAIN_SHAPES), ids=list(TRAIN_SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_chunkwise_model_shapes(seed, dtype, shape):
    """No initial state, no final-state gradient: the training path (as the model calls the kernel).
    S = 1: where every head's input gate beats its forget gate, d f is exactly 0 in float64 (it
    reaches h through eps alone) and grad_err takes the kernel's |df| instead of a relative error."""
    B, NH, S, DQK, DV, L = TRAIN_SHAPES[shape]
    errs = model_shape_errors(TRAIN_SHAPES[shape], dtype, DEV)
    torch.cuda.synchronize()
    bad = _report(f"chunkwise {dtype} {shape} B{B} NH{NH} S{S} {DQK}/{DV} L={L}", errs, TOL[dtype])
    assert not bad, (seed, bad)


@pytest.mark.parametrize("shape", list(TRAIN_SHAPES), ids=list(TRAIN_SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_forward_model_shapes(seed, dtype, shape):
    """The one-kernel forward (ChunkwiseConfig.fused_forward=True, whatever the default) at every
    training shape, with the backward it feeds: h and every gradient against float64."""
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig

    B, NH, S, DQK, DV, L = TRAIN_SHAPES[shape]
    errs = model_shape_errors(TRAIN_SHAPES[shape], dtype, DEV, ChunkwiseConfig(fused_forward=True))
    torch.cuda.synchronize()
    bad = _report(f"fused fwd {dtype} {shape} B{B} NH{NH} S{S} {DQK}/{DV} L={L}", errs, TOL[dtype])
    assert not bad, (seed, bad)


@pytest.mark.parametrize("chunk_size", [32, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_forward_7b_heads(seed, dtype, chunk_size):
    """The fused forward at 7B heads with an initial state and final-state gradients."""
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig

    errs = chunkwise_errors((2, 4, 333, 256, 512), dtype, chunk_size, DEV, ChunkwiseConfig(fused_forward=True))
    bad = _report(f"fused fwd {dtype} L={chunk_size} 7B heads", errs, TOL[dtype])
    assert not bad, (seed, bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_step_7b_heads(seed, dtype):
    from xlstm_edge.kernels.mlstm_recurrent import mlstm_step_triton

    B, NH, DQK, DV = 2, 8, 256, 512
    state = (
        torch.randn(B, NH, DQK, DV, device=DEV),
        torch.randn(B, NH, DQK, device=DEV),
        torch.randn(B, NH, device=DEV),
    )
    state64 = tuple(t.double() for t in state)
    errs = {}
    for step in range(3):
        q, k = (torch.randn(B, NH, DQK, device=DEV).to(dtype) for _ in range(2))
        v = torch.randn(B, NH, DV, device=DEV).to(dtype)
        i, f = torch.randn(B, NH, device=DEV), torch.randn(B, NH, device=DEV) + 3
        h, state = mlstm_step_triton(q, k, v, i, f, state)
        h64, state64 = mlstm_step(*(t.double() for t in (q, k, v, i, f)), state64)
        errs[f"h{step}"] = rel_err(h, h64)
        errs[f"C{step}"] = rel_err(state[0], state64[0])
    bad = _report(f"step {dtype}", errs, TOL[dtype])
    assert not bad, (seed, bad)


@pytest.mark.parametrize(
    "DH,dtype,B,S",
    [
        (32, torch.bfloat16, 8, 72),  # tiny-ms in training: bf16 pre-activations under autocast
        (64, torch.float32, 3, 50),
        (96, torch.float32, 3, 50),
        (64, torch.bfloat16, 16, 300),
    ],
)
def test_slstm_scan(seed, DH, dtype, B, S):
    from xlstm_edge.kernels.slstm import slstm_scan_triton

    NH = 4
    wx = torch.randn(B, S, 4, NH, DH, device=DEV).to(dtype)
    R = torch.randn(NH, DH, 4 * DH, device=DEV) / DH**0.5
    y0, c0, n0, m0 = (torch.randn(B, NH, DH, device=DEV) for _ in range(4))
    leaves = [t.clone().requires_grad_() for t in (wx, R, y0, c0, n0.abs() + 0.5, m0)]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    y, final = slstm_scan_triton(leaves[0], leaves[1], tuple(leaves[2:]))
    y64, final64 = slstm_scan(leaves64[0], leaves64[1], tuple(leaves64[2:]))
    outs, outs64 = [y, *final], [y64, *final64]
    grads = [torch.randn_like(o) for o in outs64]
    torch.autograd.backward(outs, [g.float() for g in grads])
    torch.autograd.backward(outs64, grads)
    errs = {f"out{j}": rel_err(a, b) for j, (a, b) in enumerate(zip(outs, outs64, strict=True))}
    names = ("dwx", "dR", "dy0", "dc0", "dn0", "dm0")
    errs.update({n: rel_err(a.grad, b.grad) for n, a, b in zip(names, leaves, leaves64, strict=True)})
    # float32 arithmetic throughout; dwx comes back in wx's dtype (one rounding: bf16 within 1e-2)
    bad = _report(f"slstm DH={DH} {dtype} B{B} S{S}", {k: v for k, v in errs.items() if k != "dwx"}, 1e-5)
    bad.update(_report("  dwx", {"dwx": errs["dwx"]}, TOL[dtype]))
    assert not bad, (seed, bad)


def test_chunk_128_refused_on_cuda():
    from xlstm_edge.kernels.mlstm_chunkwise import mlstm_chunkwise_triton

    q = torch.randn(1, 1, 40, 64, device=DEV)
    i = torch.randn(1, 1, 40, device=DEV)
    with pytest.raises(ValueError, match="chunk_size 128 > 64 is refused on CUDA"):
        mlstm_chunkwise_triton(q, q, q, i, i, chunk_size=128)


def test_deep_pipelining_of_one_tile_dims_refused_on_cuda():
    """num_stages 3 with a one-tile DQK or DV gave wrong results on an H200 (64/64 heads, h off by 9%)."""
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig, mlstm_chunkwise_triton

    q = torch.randn(1, 1, 40, 64, device=DEV)
    i = torch.randn(1, 1, 40, device=DEV)
    with pytest.raises(ValueError, match="num_stages 3 is refused on CUDA when DQK"):
        mlstm_chunkwise_triton(q, q, q, i, i, config=ChunkwiseConfig(num_stages=3))
    q2 = torch.randn(1, 1, 40, 128, device=DEV)  # 64-wide tiles split both dims: allowed
    h, _ = mlstm_chunkwise_triton(q2, q2, q2, i, i, config=ChunkwiseConfig(num_stages=3))
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("chunk_size", [64, 128])
def test_state_kernels_tile_independent(seed, chunk_size):
    """The chunk-start states (forward) and their gradients (backward) at 7B heads, bfloat16, do not
    depend on the state kernels' tiles: 128 x 128 against 32 x 32 (one wrong tiling once gave h off
    by 6% while the final state stayed right)."""
    import torch.nn.functional as F
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig
    from xlstm_edge.kernels.mlstm_chunkwise.backward import chunk_states_bwd
    from xlstm_edge.kernels.mlstm_chunkwise.forward import chunk_states_fwd

    BH, S, DQK, DV, L = 2, 333, 256, 512, chunk_size
    q, k = (torch.randn(BH, S, DQK, device=DEV).bfloat16() for _ in range(2))
    v, dh = (torch.randn(BH, S, DV, device=DEV).bfloat16() for _ in range(2))
    lf = F.logsigmoid(torch.randn(BH, S, device=DEV) + 3)
    ig = torch.randn(BH, S, device=DEV)
    m_pos = torch.randn(BH, S, device=DEV)
    norm = torch.rand(BH, S, device=DEV) + 1
    dden = torch.randn(BH, S, device=DEV)
    outs = {}
    for tiles in ((128, 128), (32, 32)):
        cfg = ChunkwiseConfig(block_k_states=tiles[0], block_v_states=tiles[1])
        Cs, ns, ms, Cf, nf = chunk_states_fwd(k, v, lf, ig, None, L, cfg)
        dCs, dns, dC0, dn0 = chunk_states_bwd(q, dh, lf, ig, m_pos, norm, dden, ms, None, L, cfg)
        outs[tiles] = dict(Cs=Cs, ns=ns, ms=ms, Cf=Cf, dCs=dCs, dns=dns, dC0=dC0)
    a, b = outs[(128, 128)], outs[(32, 32)]
    errs = {name: rel_err(a[name], b[name]) for name in a}
    bad = _report(f"state tiles 128x128 vs 32x32, L={L}", errs, 1e-2)
    assert not bad, (seed, bad)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_keep_states_equals_recompute(seed, dtype):
    """ChunkwiseConfig.keep_states: the same outputs and gradients, bit for bit, as recomputing the
    chunk-start states in the backward (7B heads, odd S, initial state, final-state gradients)."""
    from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig, mlstm_chunkwise_triton

    B, NH, S, DQK, DV = 2, 4, 333, 256, 512
    q, k = (torch.randn(B, NH, S, DQK, device=DEV).to(dtype) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device=DEV).to(dtype)
    i, f = torch.randn(B, NH, S, device=DEV), torch.randn(B, NH, S, device=DEV) + 3
    state = (torch.randn(B, NH, DQK, DV, device=DEV), torch.randn(B, NH, DQK, device=DEV),
             torch.randn(B, NH, device=DEV))  # fmt: skip
    grads = None
    runs = []
    for keep in (False, True):
        leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f, *state)]
        h, (C, n, m) = mlstm_chunkwise_triton(
            *leaves[:5], state=tuple(leaves[5:]), return_state=True, config=ChunkwiseConfig(keep_states=keep)
        )
        outs = (h, C, n, m)
        grads = grads or [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)
        runs.append([h, C, n, m, *(t.grad for t in leaves)])
    names = ("h", "C", "n", "m", "dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0")
    differ = [n for n, a, b in zip(names, *runs, strict=True) if not torch.equal(a, b)]
    assert not differ, (seed, differ)
