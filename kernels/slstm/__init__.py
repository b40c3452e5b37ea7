"""sLSTM scan: fused Triton forward and backward kernels beside the PyTorch reference."""

from .function import slstm_scan_triton

__all__ = ["slstm_scan_triton"]
