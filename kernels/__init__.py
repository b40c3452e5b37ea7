"""xlstm_edge.kernels: Triton kernels for the mLSTM (chunkwise fwd+bwd, fused step) and the sLSTM.

`dispatch` picks Triton on CUDA and the PyTorch forms on CPU; it imports Triton only when a Triton
kernel is asked for. The kernels themselves: `mlstm_chunkwise`, `mlstm_recurrent`, `slstm`.
"""

from .dispatch import mlstm_chunkwise, mlstm_step, resolve_backend, slstm_scan

__all__ = ["mlstm_chunkwise", "mlstm_step", "resolve_backend", "slstm_scan"]
