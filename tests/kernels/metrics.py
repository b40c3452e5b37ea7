"""Error measures shared by the kernel checks (CPU interpreter and GPU).

Gradients are measured against the float64 backward evaluated at the kernel's own output h
(``exact_h_backward``), not at the float64 h. Why: h = num / norm, and the backward's share through
the normaliser is -(dh . h) / norm times d norm. The kernel takes dh . h from the h it returned (in
q's dtype, as flash attention takes D = rowsum(dO * O)); where num and norm nearly cancel in a
gradient (one token with |q.k| e^i > 1 gives h = +-v, and d q = (dh.v - sign dh.h) k e^i / norm is
only eps-sized) bf16's rounding of h (2^-9 relative) in dh . h is the whole gradient: the kernel's
result is then right for the h it produced and far, relatively, from the float64 gradient at the
unrounded h. That gap is the output's rounding seen through a cancellation, not the backward's
arithmetic, and it is reported (``h_share``), not bounded; h itself is checked against float64 at
the same bound. The backward's own error (against the float64 backward at the kernel's h) keeps the
bounds it had (bf16 1e-2, fp32 1e-5): nothing is loosened, and a kernel that took dh . h from a
wrong h, or got any other term wrong, still fails.
"""

from __future__ import annotations

import math


def reference_normaliser(q, k, v, i, f, state=None, eps: float = 1e-6):
    """(num (B,NH,S,DV), norm (B,NH,S), m (B,NH,S)) of the mLSTM in its parallel (quadratic) form, in
    q's dtype (call it with float64 leaves): h = num / norm[..., None], both stabilised by e^{-m}. The
    same function as the chunkwise form of xlstm_edge.mlstm in real arithmetic (its m at every
    position is this running max); ``exact_h_backward`` checks that num / norm reproduces the
    reference h before using it."""
    import torch
    import torch.nn.functional as F

    B, NH, S, DQK = q.shape
    if state is None:
        C0 = torch.zeros(B, NH, DQK, v.shape[-1], dtype=q.dtype, device=q.device)
        n0 = torch.zeros(B, NH, DQK, dtype=q.dtype, device=q.device)
        m0 = torch.zeros(B, NH, dtype=q.dtype, device=q.device)
    else:
        C0, n0, m0 = state
    qs = q * DQK**-0.5
    b = F.logsigmoid(f).cumsum(-1)  # inclusive cumulative log forget gate
    causal = torch.ones(S, S, dtype=torch.bool, device=q.device).tril()
    log_D = (b[..., :, None] - b[..., None, :] + i[..., None, :]).masked_fill(~causal, -math.inf)
    m_inter = b + m0[..., None]  # weight of the initial state at t, before stabilising
    m = torch.maximum(m_inter, log_D.max(-1).values)
    scores = (qs @ k.transpose(-2, -1)) * torch.exp(log_D - m[..., None])
    alpha = torch.exp(m_inter - m)
    num = scores @ v + alpha[..., None] * (qs @ C0)
    den = scores.sum(-1) + alpha * (qs * n0[..., None, :]).sum(-1)
    norm = torch.maximum(den.abs(), torch.exp(-m)) + eps
    return num, norm, m


def exact_h_backward(leaves64, outs64, grads64, h_kernel, eps: float = 1e-6):
    """The float64 gradients of every leaf, twice: (at the kernel's h, at the float64 h).

    leaves64: q, k, v, i, f (and C0, n0, m0 when there is an initial state), float64, requiring grad;
    outs64: h64 (and the final state) computed from them; grads64: the incoming gradients (float64,
    h's first); h_kernel: the h the kernel returned. The first list is the plain float64 backward
    with the normaliser's share re-taken with dh . h_kernel in place of dh . h64. The normaliser is
    taken unstabilised, N = e^m norm = max(|DEN|, 1) + eps e^m, as the kernel takes it: the e^-m
    factor of the stabilised num and norm cancels exactly between them, and the kernel never forms
    it (backward.py: the stabilizer's gradient flows through eps alone), so h's rounding enters
    only through N: at_h = ref - J_N^T (dh . (h_kernel - h64) / N), with d N / N = d (log norm + m)."""
    import torch

    from tests.conftest import rel_err

    ref = torch.autograd.grad(outs64, leaves64, grads64, retain_graph=True, allow_unused=True)
    ref = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves64, ref, strict=True)]
    state = tuple(leaves64[5:]) or None
    num, norm, m = reference_normaliser(*leaves64[:5], state=state, eps=eps)
    h64 = outs64[0]
    check = rel_err(num / norm[..., None], h64)
    assert check <= 1e-9, f"parallel-form normaliser does not reproduce the reference h ({check:.1e})"
    e = (grads64[0] * (h_kernel.detach().double() - h64.detach())).sum(-1)
    share = -(e * (norm.log() + m)).sum()
    corr = torch.autograd.grad(share, leaves64, allow_unused=True)
    at_h = [r if c is None else r + c for r, c in zip(ref, corr, strict=True)]
    return at_h, ref


def grad_err(got, ref) -> float:
    """Norm-wise relative error of a gradient; where the float64 gradient is exactly zero (one token
    and no state: d f reaches the output through eps alone and can underflow to 0, and no term of the
    kernel's sum reaches it either) the largest |value| the kernel gave, which must be ~0 too."""
    from tests.conftest import rel_err

    return rel_err(got, ref) if bool(ref.abs().max() > 0) else float(got.abs().max())


def h_share(ref_at_h, ref) -> float:
    """How far the float64 gradient moves when the backward takes dh . h from the kernel's h
    (relative to the gradient at the float64 h; 0 where that one is exactly zero)."""
    scale = ref.double().norm().item()
    return (ref_at_h.double() - ref.double()).norm().item() / scale if scale > 0 else 0.0


def grad_failures(errs: dict[str, float], tol: float) -> dict[str, float]:
    """The bounded entries of ``errs`` above ``tol`` (NaN fails); entries named "... (...)" are reported
    figures (h shares, dm0's plain relative error), not bounds."""
    return {k: v for k, v in errs.items() if "(" not in k and not v <= tol}


def dm0_rel_err(dm0, dm0_ref, C0, dC0_ref, n0, dn0_ref) -> float:
    """Error of the initial stabilizer's gradient, (B, NH), against the spread of its terms.

    Per head dm0 = <C0, dC0> + n0.dn0 + (a stabilizer-path scalar): a sum of DQK * (DV + 1) random-sign
    terms t_j. Rounding errors in them add up to about eps * sqrt(sum t_j^2), while the sum itself
    can land near 0 by chance, so a plain relative error is a ratio of two random numbers with a
    heavy tail. This divides by sqrt(sum t_j^2) per head instead (the same figure on a typical draw).
    """
    dm0_ref = dm0_ref.double()
    C0, n0 = C0.double(), n0.double()
    cterms = (C0 * dC0_ref.double()).flatten(2)
    nterms = n0 * dn0_ref.double()
    rest = dm0_ref - cterms.sum(-1) - nterms.sum(-1)
    spread = (cterms.pow(2).sum(-1) + nterms.pow(2).sum(-1) + rest.pow(2)).sqrt()
    return ((dm0.double() - dm0_ref) / spread).norm().item() / spread.numel() ** 0.5


def model_shape_errors(shape, dtype, device, config=None) -> dict[str, float]:
    """One random draw at a training shape (B, NH, S, DQK, DV, L) as the model calls the kernel (no
    initial state, no final-state gradient) against float64: h, and every gradient against the
    float64 backward at the kernel's h (``grad_err``), with each gradient's h share reported as
    "dX (h share)". config: a ChunkwiseConfig (None: the default)."""
    import torch
    from xlstm_edge.kernels.mlstm_chunkwise import mlstm_chunkwise_triton

    from tests.conftest import rel_err
    from xlstm_edge.mlstm import mlstm_chunkwise

    B, NH, S, DQK, DV, L = shape
    q, k = (torch.randn(B, NH, S, DQK, device=device).to(dtype) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device=device).to(dtype)
    i = torch.randn(B, NH, S, device=device)
    f = torch.randn(B, NH, S, device=device) + 3
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f)]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    h, _ = mlstm_chunkwise_triton(*leaves, chunk_size=L, return_state=True, config=config)
    h64, _ = mlstm_chunkwise(*leaves64, chunk_size=L)
    grad = torch.randn_like(h64).to(h.dtype)  # rounded to h's dtype for both sides
    h.backward(grad)
    at_h, ref = exact_h_backward(leaves64, [h64], [grad.double()], h)
    errs = {"h": rel_err(h, h64)}
    for n, a, g, g0 in zip(("dq", "dk", "dv", "di", "df"), leaves, at_h, ref, strict=True):
        errs[n] = grad_err(a.grad, g)
        errs[f"{n} (h share)"] = h_share(g, g0)
    return errs


def chunkwise_errors(shape, dtype, chunk_size, device, config=None, any_chunk: bool = False) -> dict[str, float]:
    """One random draw through ``mlstm_chunkwise_triton`` and the float64 PyTorch chunkwise form.

    any_chunk: call the autograd function directly, past the op's refusal of chunk sizes above
    MAX_CUDA_CHUNK on CUDA (bench/kernel_precision.py, to watch whether they still miscompute).
    shape (B, NH, S, DQK, DV); q, k, v in ``dtype``, gates and the initial state float32; the incoming
    gradients of h and of the final state are rounded to each output's dtype for both sides (they are
    inputs too). Returns the relative error of h, C, n, m and of every gradient against the float64
    backward at the kernel's h (``exact_h_backward``); dm0 against the spread of its terms. Reported,
    not bounded: "dm0 (plain)" and each gradient's "dX (h share)".
    """
    import torch
    from xlstm_edge.kernels.mlstm_chunkwise import mlstm_chunkwise_triton

    from tests.conftest import rel_err
    from xlstm_edge.mlstm import mlstm_chunkwise

    B, NH, S, DQK, DV = shape
    q, k = (torch.randn(B, NH, S, DQK, device=device).to(dtype) for _ in range(2))
    v = torch.randn(B, NH, S, DV, device=device).to(dtype)
    i = torch.randn(B, NH, S, device=device)
    f = torch.randn(B, NH, S, device=device) + 3
    state = (torch.randn(B, NH, DQK, DV, device=device), torch.randn(B, NH, DQK, device=device),
             torch.randn(B, NH, device=device))  # fmt: skip
    leaves = [t.clone().requires_grad_() for t in (q, k, v, i, f, *state)]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    if any_chunk:
        from xlstm_edge.kernels.mlstm_chunkwise.forward import ChunkwiseConfig
        from xlstm_edge.kernels.mlstm_chunkwise.function import MLSTMChunkwiseFunction, _Settings

        settings = _Settings(chunk_size=chunk_size, eps=1e-6, config=config or ChunkwiseConfig())
        h, *final = MLSTMChunkwiseFunction.apply(*leaves, settings)
    else:
        h, final = mlstm_chunkwise_triton(
            *leaves[:5], state=tuple(leaves[5:]), chunk_size=chunk_size, return_state=True, config=config
        )
    h64, final64 = mlstm_chunkwise(*leaves64[:5], state=tuple(leaves64[5:]), chunk_size=64)
    assert h.dtype == dtype and all(t.dtype == torch.float32 for t in final)
    outs, outs64 = [h, *final], [h64, *final64]
    grads = [torch.randn_like(o).to(out.dtype) for o, out in zip(outs64, outs, strict=True)]
    torch.autograd.backward(outs, grads)
    at_h, ref = exact_h_backward(leaves64, outs64, [g.double() for g in grads], h)
    assert leaves[0].grad.dtype == dtype
    errs = {n: rel_err(a, b) for n, a, b in zip(("h", "C", "n", "m"), outs, outs64, strict=True)}
    names = ("dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0 (plain)")
    for n, a, g, g0 in zip(names, leaves, at_h, ref, strict=True):
        errs[n] = grad_err(a.grad, g)
        if n != "dm0 (plain)":
            errs[f"{n} (h share)"] = h_share(g, g0)
    (C0, n0, m0) = leaves[5:]
    errs["dm0"] = dm0_rel_err(m0.grad, at_h[7], C0, at_h[5], n0, at_h[6])
    return errs
