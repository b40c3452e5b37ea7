"""Error measures shared by the kernel checks (CPU interpreter and GPU)."""

from __future__ import annotations


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


def chunkwise_errors(shape, dtype, chunk_size, device, config=None, any_chunk: bool = False) -> dict[str, float]:
    """One random draw through ``mlstm_chunkwise_triton`` and the float64 PyTorch chunkwise form.

    any_chunk: call the autograd function directly, past the op's refusal of chunk sizes above
    MAX_CUDA_CHUNK on CUDA (bench/kernel_precision.py, to watch whether they still miscompute).
    shape (B, NH, S, DQK, DV); q, k, v in ``dtype``, gates and the initial state float32; the incoming
    gradients of h and of the final state are rounded to each output's dtype for both sides (they are
    inputs too). Returns the relative error of h, C, n, m and of every gradient; dm0 against the spread
    of its terms, with the plain figure as "dm0 (plain)" (reported, not bounded).
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
    torch.autograd.backward(outs64, [g.double() for g in grads])
    assert leaves[0].grad.dtype == dtype
    errs = {n: rel_err(a, b) for n, a, b in zip(("h", "C", "n", "m"), outs, outs64, strict=True)}
    names = ("dq", "dk", "dv", "di", "df", "dC0", "dn0", "dm0 (plain)")
    errs.update({n: rel_err(a.grad, b.grad) for n, a, b in zip(names, leaves, leaves64, strict=True)})
    (C0, n0, m0), (C0r, n0r, m0r) = leaves[5:], leaves64[5:]
    errs["dm0"] = dm0_rel_err(m0.grad, m0r.grad, C0, C0r.grad, n0, n0r.grad)
    return errs
