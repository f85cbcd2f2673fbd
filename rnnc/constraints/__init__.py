"""Tiling: GPU profiles and one CP-SAT model per strategy, with a cost model as objective."""
