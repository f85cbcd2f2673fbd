"""Why a tiling model has no solution, or which constraints limit its optimum, in words a user can act on.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.constraints.problem import problem_of
    >>> from rnnc.constraints.profiles import load_profile
    >>> from rnnc.constraints.tiling import BUILDERS
    >>> plan = analyse_source(open("examples/lstm.rnn").read())
    >>> problem = problem_of(plan, {"B": 4, "T": 64, "NH": 1, "H": 64}, "bfloat16")
    >>> model = BUILDERS["sequential"](problem, load_profile("h100"))
    >>> best = model.solve()
    >>> [describe(c, best.values, load_profile("h100")).split(":")[0] for c in model.binding(best)]
    ['dot rows (BLOCK_B)']
"""

from __future__ import annotations

from dataclasses import asdict

from rnnc.compiler import Plan
from rnnc.constraints.model import Const, Model, lift
from rnnc.constraints.problem import Problem
from rnnc.constraints.profiles import GpuProfile


def describe(constraint, values: dict, profile: GpuProfile) -> str:
    lhs, limit = constraint.values(values)
    unit = f" {constraint.unit}" if constraint.unit else ""
    return f"{constraint.name}: {lhs} <= {limit}{unit} ({constraint.reason})"


def diagnose(model: Model, plan: Plan, problem: Problem, profile: GpuProfile) -> str:
    """Why no tiling exists: the constraint that decides, what it needs, what the GPU has."""
    head = (
        f"no tiling of {plan.ir.cell} ({plan.strategy}) fits {profile.full_name} at "
        + ", ".join(f"{k}={v}" for k, v in (("B", problem.B), ("T", problem.T), ("NH", problem.NH), *problem.dims))
        + f" in {problem.dtype}"
    )
    reasons = []
    for constraint in model.constraints:  # one constraint alone decides: say what it needs at best
        relaxed = model.solve(drop=(constraint.name,), minimise=lift(constraint.lhs))
        if relaxed is not None:
            reasons.append(_shortfall(constraint, relaxed.values, profile, "needs at least"))
    if not reasons:  # several conflict: show the tiling that breaks them least
        closest = model.closest()
        if closest is not None:
            shown = ", ".join(f"{k}={v}" for k, v in closest.values.items())
            reasons.append(f"the budgets conflict; the closest tiling ({shown}) breaks:")
            reasons += [
                "  " + _shortfall(c, closest.values, profile, "needs")
                for c in model.constraints
                if not c.holds(closest.values)
            ]
    lines = [head + ":", *(f"  {r}" for r in reasons)]
    lines += [f"  {s}" for s in _alternatives(plan, problem, profile)]
    return "\n".join(lines)


def _shortfall(constraint, values: dict, profile: GpuProfile, verb: str) -> str:
    needed, limit = constraint.values(values)
    unit = f" {constraint.unit}" if constraint.unit else ""
    if isinstance(lift(constraint.lhs), Const):  # a minimum on a tile: the tiling, not the GPU, falls short
        return (
            f"{constraint.name}: {verb} {needed}{unit}, and only {limit} fits the {profile.name}'s other budgets "
            f"({constraint.reason})"
        )
    return f"{constraint.name}: {verb} {needed}{unit}, the {profile.name} allows {limit} ({constraint.reason})"


def _alternatives(plan: Plan, problem: Problem, profile: GpuProfile) -> list[str]:
    """Other strategies or dtypes under which the same cell would fit."""
    from rnnc.constraints.tiling import BUILDERS  # the models import nothing of this module; tiling imports it

    out = []
    strategies = ["sequential"] + (["scan"] if plan.strategy == "chunked" and _elementwise(plan) else [])
    for strategy in strategies:
        if strategy == plan.strategy:
            continue
        other = Problem(**{**asdict(problem), "strategy": strategy})
        found = BUILDERS[strategy](other, profile).solve()
        if found is not None:
            unit = BUILDERS[strategy](other, profile).unit_ns
            out.append(f"the {strategy} kernel would fit (estimated {found.objective * unit / 1000:.1f} us)")
    for dtype in ("bfloat16",) if problem.dtype in ("float32", "float64") else ():
        other = Problem(**{**asdict(problem), "dtype": dtype})
        if BUILDERS[plan.strategy](other, profile).solve() is not None:
            out.append(f"with {dtype} inputs and weights it would fit")
    if plan.strategy == "sequential" and problem.gates:
        total = problem.gates * problem.hidden * problem.hidden * problem.bytes
        on_chip = profile.sm_count * (profile.shared_memory_per_sm + profile.registers_per_sm * 4)
        out.append(
            f"the recurrent weights of one head need {total / 2**20:.1f} MiB on chip; all "
            f"{profile.sm_count} SMs of the {profile.name} hold {on_chip / 2**20:.1f} MiB of shared memory "
            "and registers together"
        )
    return out


def _elementwise(plan: Plan) -> bool:
    return all(t.structure in ("identity", "scalar", "diagonal", "elementwise") for t in plan.transitions)
