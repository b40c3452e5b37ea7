"""Chunkwise mLSTM (training, prefill): Triton forward + backward beside the PyTorch reference.

Importing this package imports Triton; `xlstm_edge.kernels.dispatch` does so only on demand.
"""

from .forward import ChunkwiseConfig
from .function import mlstm_chunkwise_triton

__all__ = ["ChunkwiseConfig", "mlstm_chunkwise_triton"]
