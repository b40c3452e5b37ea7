"""The PyTorch reference for the chunkwise kernels (same equations, same argument order).

`mlstm_chunkwise(q, k, v, i, f, state=None, chunk_size=64, eps=1e-6) -> (h, (C, n, m))` and the
token-by-token `mlstm_recurrent`, both from the model package; tests run them in float64.
"""

from xlstm_edge.mlstm import mlstm_chunkwise, mlstm_recurrent

__all__ = ["mlstm_chunkwise", "mlstm_recurrent"]
