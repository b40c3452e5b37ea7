"""xlstm_edge.runtime"""
