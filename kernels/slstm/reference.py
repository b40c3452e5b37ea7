"""The PyTorch reference for the sLSTM kernels: `slstm_scan(wx, R, state=None)`, `slstm_step`."""

from xlstm_edge.slstm import slstm_scan, slstm_step

__all__ = ["slstm_scan", "slstm_step"]
