"""The mLSTM cell's three forms agree with a float64 step-by-step reference."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import rel_err
from xlstm_edge.mlstm import mlstm_chunkwise, mlstm_parallel, mlstm_recurrent, zero_state


def _inputs(B, NH, S, DQK, DV, dtype=torch.float32):
    q = torch.randn(B, NH, S, DQK, dtype=dtype)
    k = torch.randn(B, NH, S, DQK, dtype=dtype)
    v = torch.randn(B, NH, S, DV, dtype=dtype)
    i = torch.randn(B, NH, S, dtype=dtype)
    f = torch.randn(B, NH, S, dtype=dtype) + 3
    return q, k, v, i, f


def _random_state(B, NH, DQK, DV, dtype=torch.float32):
    C = torch.randn(B, NH, DQK, DV, dtype=dtype)
    n = torch.randn(B, NH, DQK, dtype=dtype)
    m = torch.randn(B, NH, dtype=dtype)
    return C, n, m


@pytest.mark.parametrize("S,chunk", [(1, 4), (7, 4), (16, 4), (33, 8), (50, 16), (64, 64), (70, 32)])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunkwise_and_parallel_match_float64_recurrence(seed, S, chunk, with_state):
    B, NH, DQK, DV = 2, 3, 8, 12
    x32 = _inputs(B, NH, S, DQK, DV)
    x64 = tuple(t.double() for t in x32)
    st32 = _random_state(B, NH, DQK, DV) if with_state else None
    st64 = tuple(t.double() for t in st32) if with_state else None
    h_ref, (C_ref, n_ref, m_ref) = mlstm_recurrent(*x64, state=st64)
    naive = mlstm_recurrent(*x32, state=st32)
    # 1e-6, or 8x what the plain fp32 token loop itself gets on this draw (its rounding floor: h
    # divides by max(|q.n|, exp(-m)), which amplifies rounding when q.n is small). The chunkwise and
    # parallel forms round as much, in another order (matrix products over a chunk or the whole
    # sequence instead of a running sum), so their error is of the loop's size, not below twice it:
    # seed 995407913 (S 33, chunk 8, no state) gave parallel 2.1e-6 against the loop's 0.7e-6. A wrong
    # gate, mask or chunk boundary is off by 1e-2 or more.
    tol = max(1e-6, 8 * rel_err(naive[0], h_ref))
    for name, (h, (C, n, m)) in {
        "chunkwise": mlstm_chunkwise(*x32, state=st32, chunk_size=chunk),
        "parallel": mlstm_parallel(*x32, state=st32),
        "recurrent": naive,
    }.items():
        assert h.dtype == torch.float32
        assert rel_err(h, h_ref) <= tol, (name, seed, rel_err(h, h_ref), tol)
        # C, n are stored relative to exp(m): compare the unscaled quantities
        scale, scale_ref = torch.exp(m)[..., None], torch.exp(m_ref)[..., None]
        assert rel_err(n * scale, n_ref * scale_ref) <= 1e-6, (name, seed)
        assert rel_err(C * scale[..., None], C_ref * scale_ref[..., None]) <= 1e-6, (name, seed)


def test_chunked_calls_carry_state(seed):
    """Two chunkwise calls with the state carried equal one call over the whole sequence."""
    B, NH, S, DQK, DV = 1, 2, 45, 16, 16
    x = _inputs(B, NH, S, DQK, DV, torch.float64)
    h_full, st_full = mlstm_chunkwise(*x, chunk_size=8)
    first = tuple(t[:, :, :20] for t in x)
    second = tuple(t[:, :, 20:] for t in x)
    h1, st = mlstm_chunkwise(*first, chunk_size=8)
    h2, st = mlstm_chunkwise(*second, state=st, chunk_size=16)
    assert rel_err(torch.cat([h1, h2], 2), h_full) <= 1e-12
    for a, b in zip(st, st_full, strict=True):
        assert rel_err(a, b) <= 1e-12


def test_zero_state_is_zero():
    C, n, m = zero_state(2, 3, 4, 5)
    assert C.shape == (2, 3, 4, 5) and n.shape == (2, 3, 4) and m.shape == (2, 3)
    assert not C.any() and not n.any() and not m.any()
