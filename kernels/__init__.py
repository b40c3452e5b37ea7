"""xlstm_edge.kernels"""
