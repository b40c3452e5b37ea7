"""Chunkwise mLSTM Triton kernels (Triton's CPU interpreter, float32) against float64 references:
outputs, final state and every gradient (inputs and initial state), odd S, two chunk sizes, tiles.

Run through test_interpreter.py (a subprocess with TRITON_INTERPRET=1), or directly:
    TRITON_INTERPRET=1 pytest tests/kernels/interp_mlstm_chunkwise.py
"""

from __future__ import annotations

import pytest
import torch
from xlstm_edge.kernels.common import interpreter_on

from tests.conftest import rel_err
from xlstm_edge.mlstm import mlstm_chunkwise, mlstm_recurrent

if not interpreter_on():
    pytest.skip("needs TRITON_INTERPRET=1 (see test_interpreter.py)", allow_module_level=True)

from xlstm_edge.kernels.mlstm_chunkwise import ChunkwiseConfig, mlstm_chunkwise_triton  # noqa: E402

TOL = 1e-4
NAMES = ("q", "k", "v", "i", "f", "C0", "n0", "m0")


def make_inputs(B, NH, S, DQK, DV, i_scale=1.0, i_shift=0.0, qk_mean=0.0):
    q = torch.randn(B, NH, S, DQK) + qk_mean
    k = torch.randn(B, NH, S, DQK) + qk_mean
    v = torch.randn(B, NH, S, DV)
    i = torch.randn(B, NH, S) * i_scale + i_shift
    f = torch.randn(B, NH, S) + 3
    return q, k, v, i, f


def make_state(B, NH, DQK, DV):
    return torch.randn(B, NH, DQK, DV), torch.randn(B, NH, DQK), torch.randn(B, NH)


def compare(op, inputs, state, chunk_size, return_state, config=None, reference=mlstm_recurrent):
    """Run the kernel (float32) and the reference (float64) with the same output gradients.

    Returns {name: rel err} for h, the final state (when returned) and every input's gradient.
    """
    leaves = [t.clone().requires_grad_() for t in inputs + (state or ())]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    n_in = len(inputs)
    st = tuple(leaves[n_in:]) or None
    st64 = tuple(leaves64[n_in:]) or None
    h, final = op(*leaves[:n_in], state=st, chunk_size=chunk_size, return_state=return_state, config=config)
    h64, final64 = reference(*leaves64[:n_in], state=st64)
    outs, outs64 = [h], [h64]
    if return_state:
        assert final is not None and all(t.dtype == torch.float32 for t in final)
        outs += list(final)
        outs64 += list(final64)
    else:
        assert final is None
    grads = [torch.randn_like(o) for o in outs64]
    torch.autograd.backward(outs, [g.float() for g in grads])
    torch.autograd.backward(outs64, grads)
    errs = {name: rel_err(a, b) for name, a, b in zip(("h", "C", "n", "m"), outs, outs64, strict=False)}
    errs.update(
        {f"d{name}": _grad_err(a.grad, b.grad) for name, a, b in zip(NAMES, leaves, leaves64, strict=False)}
    )
    return errs


def _grad_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative error, or, where the float64 gradient is exactly zero (one token and no state: d f
    reaches the output through eps alone and can underflow to 0), the largest |value| the kernel gave:
    a relative error has nothing to divide by there, and the kernel's value must be ~0 too."""
    return rel_err(got, ref) if bool(ref.abs().max() > 0) else float(got.abs().max())


@pytest.mark.parametrize(
    "S,chunk_size,with_state,return_state,tiles",
    [
        (37, 16, False, True, (0, 0)),  # odd S: a padded last chunk
        (37, 32, True, True, (16, 16)),  # second chunk size, initial state, DQK and DV tiled by 16
        (20, 16, True, False, (0, 0)),  # no final-state gradients
        (1, 16, True, True, (0, 0)),  # a single token
        (1, 16, False, False, (0, 0)),  # a single token, no state: d f comes through eps alone
        (11, 32, False, False, (0, 0)),  # S below a chunk, no state (the training path)
    ],
)
def test_matches_float64(seed, S, chunk_size, with_state, return_state, tiles):
    B, NH, DQK, DV = 2, 2, 32, 48
    bk, bv = tiles  # per-chunk kernels and state kernels alike (0 = automatic)
    config = ChunkwiseConfig(block_k=bk, block_v=bv, block_k_states=bk, block_v_states=bv)
    state = make_state(B, NH, DQK, DV) if with_state else None
    errs = compare(
        mlstm_chunkwise_triton,
        make_inputs(B, NH, S, DQK, DV),
        state,
        chunk_size,
        return_state,
        config,
    )
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, (seed, bad)


def test_large_input_gates(seed):
    """Input gates near the soft cap: the stabilizer's eps path carries real gradient here.
    q, k share a mean so that q.n stays away from 0 (a well-conditioned normaliser)."""
    B, NH, S, DQK, DV = 1, 2, 40, 16, 32
    inputs = make_inputs(B, NH, S, DQK, DV, i_scale=3.0, i_shift=10.0, qk_mean=1.0)
    errs = compare(
        mlstm_chunkwise_triton,
        inputs,
        make_state(B, NH, DQK, DV),
        16,
        True,
        reference=lambda *a, state: mlstm_chunkwise(*a, state=state, chunk_size=8),
    )
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, (seed, bad)


def test_carried_state_equals_one_pass(seed):
    B, NH, S, DQK, DV = 1, 2, 45, 16, 16
    op = mlstm_chunkwise_triton
    x = make_inputs(B, NH, S, DQK, DV)
    with torch.no_grad():
        h_full, st_full = op(*x, chunk_size=16, return_state=True)
        h1, st1 = op(*(t[:, :, :19] for t in x), chunk_size=16, return_state=True)
        h2, st2 = op(*(t[:, :, 19:] for t in x), state=st1, chunk_size=16, return_state=True)
    assert rel_err(torch.cat([h1, h2], 2), h_full) <= 1e-5, seed
    for a, b in zip(st2, st_full, strict=True):
        assert rel_err(a, b) <= 1e-5, seed


def test_bad_inputs_raise_one_clear_error():
    op = mlstm_chunkwise_triton
    q, k, v, i, f = make_inputs(1, 1, 8, 16, 16)
    with pytest.raises(ValueError, match="chunk_size must be a power of two"):
        op(q, k, v, i, f, chunk_size=24)
    with pytest.raises(ValueError, match="multiples of 16"):
        op(q[..., :12], k[..., :12], v, i, f)
    with pytest.raises(ValueError, match="share one dtype"):
        op(q, k.double(), v, i, f)
    with pytest.raises(ValueError, match="state C has shape"):
        op(q, k, v, i, f, state=make_state(1, 1, 16, 32))
    with pytest.raises(ValueError, match=r"i has shape"):
        op(q, k, v, i[..., :4], f)


def test_keep_states_equals_recompute(seed):
    """ChunkwiseConfig.keep_states (the forward's chunk-start states kept for the backward) gives the
    same outputs and gradients, bit for bit, as recomputing them in the backward."""
    inputs = make_inputs(2, 2, 45, 32, 64)
    state = make_state(2, 2, 32, 64)
    runs = []
    for keep in (False, True):
        leaves = [t.clone().requires_grad_() for t in (*inputs, *state)]
        h, (C, n, m) = mlstm_chunkwise_triton(
            *leaves[:5], state=tuple(leaves[5:]), chunk_size=16, return_state=True,
            config=ChunkwiseConfig(keep_states=keep),
        )  # fmt: skip
        torch.manual_seed(1)
        outs = (h, C, n, m)
        torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
        runs.append([h, C, n, m, *(t.grad for t in leaves)])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("S,chunk_size,final", [(45, 16, True), (200, 16, True), (37, 16, False), (1, 16, False)])
def test_gate_kernel_matches_pytorch_glue(seed, S, chunk_size, final):
    """`gate_grads_fused` (one Triton kernel, backward.FUSED_GLUE) against the PyTorch `gate_grads` and
    d f = d logf sigmoid(-f) in float64, on random sums with resets of the stabiliser (m_t = i_t) about
    a third of the time; the final m's gradient given expanded (stride 0), as autograd hands over
    m.sum()'s."""
    import torch.nn.functional as F
    from xlstm_edge.kernels.mlstm_chunkwise.backward import gate_grads, gate_grads_fused

    BH = 3
    NC = -(-S // chunk_size)
    f = torch.randn(BH, S) + 2
    ig = torch.randn(BH, S) * 3
    m_pos = torch.where(torch.rand(BH, S) < 0.3, ig, ig + torch.rand(BH, S))
    kdk, cross, qa, ke, dm_pos = (torch.randn(BH, S) for _ in range(5))
    shares = torch.randn(BH, NC)
    final_share = torch.randn(BH) if final else None
    dm_final = torch.ones(1).expand(BH) if final else None
    d = [None if t is None else t.double() for t in (f, ig, m_pos, kdk, cross, qa, ke, dm_pos, shares, final_share, dm_final)]
    f64, ig64, m64, kdk64, cross64, qa64, ke64, dm64, sh64, fs64, dmf64 = d
    dlf, di, dm0 = gate_grads(F.logsigmoid(f64), ig64, torch.zeros(BH, dtype=torch.float64), m64, kdk64, cross64,
                              qa64, ke64, dm64, sh64, chunk_size, fs64, dmf64)  # fmt: skip
    df2, di2, dm02 = gate_grads_fused(f, ig, m_pos, kdk, cross, qa, ke, dm_pos, shares, chunk_size, final_share,
                                      dm_final)  # fmt: skip
    assert rel_err(df2, dlf * torch.sigmoid(-f64)) < 1e-5
    assert rel_err(di2, di) < 1e-5
    if dm0.abs().max() == 0:  # every row's first token reset the stabiliser: nothing reaches m0
        assert dm02.abs().max() == 0
    else:
        assert rel_err(dm02, dm0) < 1e-5


@pytest.mark.parametrize(
    "S,chunk_size,with_state,return_state,DQK,DV,bv",
    [
        (37, 16, True, True, 32, 48, 16),  # odd S, initial state, three DV tiles
        (45, 16, False, True, 48, 32, 0),  # DQK 48: padded to 64 inside the kernel
        (11, 32, False, False, 32, 48, 0),  # S below a chunk (the training path)
        (1, 16, True, True, 16, 32, 16),  # a single token
    ],
)
def test_fused_forward_matches_float64(seed, S, chunk_size, with_state, return_state, DQK, DV, bv):
    """The one-kernel forward (ChunkwiseConfig.fused_forward): outputs, final state and, through the
    unchanged backward, every gradient against float64."""
    B, NH = 2, 2
    config = ChunkwiseConfig(fused_forward=True, block_v_fused=bv)
    state = make_state(B, NH, DQK, DV) if with_state else None
    errs = compare(mlstm_chunkwise_triton, make_inputs(B, NH, S, DQK, DV), state, chunk_size, return_state, config)
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, (seed, bad)


def test_fused_forward_keeps_states(seed):
    """fused_forward with keep_states: the states it writes for the backward give the gradients of
    the recomputing path (to float32 rounding) and the same h, bit for bit."""
    inputs = make_inputs(2, 2, 45, 32, 64)
    state = make_state(2, 2, 32, 64)
    runs = []
    for keep in (False, True):
        leaves = [t.clone().requires_grad_() for t in (*inputs, *state)]
        cfg = ChunkwiseConfig(fused_forward=True, keep_states=keep)
        h, (C, n, m) = mlstm_chunkwise_triton(
            *leaves[:5], state=tuple(leaves[5:]), chunk_size=16, return_state=True, config=cfg
        )
        torch.manual_seed(1)
        outs = (h, C, n, m)
        torch.autograd.backward(outs, [torch.randn_like(o) for o in outs])
        runs.append([h, C, n, m, *(t.grad for t in leaves)])
    assert torch.equal(runs[0][0], runs[1][0])
    for a, b in zip(*runs, strict=True):
        assert rel_err(a, b) <= 1e-6
