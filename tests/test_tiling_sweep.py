"""Every runnable request gets a tiling (issue 12): the zoo x 7 profiles x B in {1, 16, 64} x heads
(head dim, heads) in {(64, 12), (768, 1), (768, 12), (1024, 1)}, bf16, T = 1024, each choice within
the profile's budgets as recomputed from the kernels' documented tiles (tests/budgets.py)."""

import pytest
from budgets import recheck_budgets
from conftest import ZOO

from rnnc.compiler import analyse_source
from rnnc.constraints.problem import problem_of
from rnnc.constraints.profiles import load_profile, profile_names
from rnnc.constraints.tiling import solve_tiling

HEADS = [(64, 12), (768, 1), (768, 12), (1024, 1)]
BATCHES = [1, 16, 64]
FIXED = {("mamba", "N"): 16, ("lti", "M"): 8}  # Mamba's state width and the LTI input stay small


@pytest.mark.parametrize("cell", ZOO)
def test_every_request_of_the_sweep_gets_a_tiling_within_the_budgets(cell):
    plan = analyse_source(open(f"examples/{cell}.rnn").read())
    for gpu in profile_names():
        profile = load_profile(gpu)
        for size, heads in HEADS:
            for B in BATCHES:
                shape = {"B": B, "T": 1024, "NH": heads, **{d: FIXED.get((cell, d), size) for d in plan.ir.dims}}
                tiling = solve_tiling(plan, profile, shape, "bfloat16", use_cache=False, find_binding=False)
                recheck_budgets(problem_of(plan, shape, "bfloat16"), profile, tiling.params)
