"""xlstm_edge.quant"""
