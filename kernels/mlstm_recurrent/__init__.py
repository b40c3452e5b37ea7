"""Recurrent (decode) mLSTM: a fused Triton step kernel beside the PyTorch reference step."""

from .step import mlstm_step_triton

__all__ = ["mlstm_step_triton"]
