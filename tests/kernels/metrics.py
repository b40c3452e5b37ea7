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
