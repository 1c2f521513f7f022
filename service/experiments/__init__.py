"""Experiments: the evidence of their variants, its statistics, reports and canaries."""
