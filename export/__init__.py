"""xlstm_edge.export"""
