"""The PyTorch reference for the step kernel: `mlstm_step(q, k, v, i, f, state, eps=1e-6)`."""

from xlstm_edge.mlstm import mlstm_recurrent, mlstm_step

__all__ = ["mlstm_recurrent", "mlstm_step"]
