"""Solving for a tiling: the model of the cell's strategy, its optimum at once, runners-up and why when asked.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> plan = analyse_source(open("examples/lstm.rnn").read())
    >>> til = solve_tiling(plan, "h100", {"B": 16, "T": 1024, "NH": 12, "H": 64}, "bfloat16", use_cache=False)
    >>> til.params["BLOCK_B"], til.strategy, til.computed("candidates"), len(til.candidates) > 0
    (16, 'sequential', False, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

from rnnc import config
from rnnc.cache_entries import fields_problem, parse_json, tiling_problem
from rnnc.compiler import Plan
from rnnc.constraints import chunked, scan, sequential
from rnnc.constraints.common import REGISTER_BUDGETS
from rnnc.constraints.diagnose import describe, diagnose
from rnnc.constraints.model import Model
from rnnc.constraints.problem import Problem, problem_of
from rnnc.constraints.profiles import GpuProfile, load_profile
from rnnc.constraints.tiling_result import FIELDS, Tiling
from rnnc.errors import TilingError

MODEL_VERSION = "8"  # bump when a model changes: cached tilings of older models are not reused
BUILDERS = {"sequential": sequential.build_model, "scan": scan.build_model, "chunked": chunked.build_model}
_PLAN_KEYS: dict[int, tuple[Plan, str]] = {}  # plan.key() takes milliseconds: once per Plan object


def solve_tiling(
    plan: Plan,
    gpu: str | GpuProfile,
    shape: dict,
    dtype: str = "bfloat16",
    *,
    candidates: int = 4,
    use_cache: bool = True,
    find_binding: bool = True,
) -> Tiling:
    """The best tiling of ``plan`` for ``shape`` on ``gpu``; raises TilingError when none fits.

    One solve gives the optimum, among the kernels that exist when one of them fits, else among
    the variants the models describe that are not built yet (streamed sequential weights, chunked
    key-dimension pieces; ``docs/decisions.md``). ``candidates`` runners-up (one solve each) and the binding
    constraints (one re-solve per constraint) are computed when the tiling's ``candidates`` or
    ``binding`` is first read; ``find_binding=False`` makes ``binding`` empty.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> plan = analyse_source(open("examples/hgrn.rnn").read())
        >>> solve_tiling(plan, "l4", {"B": 1, "T": 256, "NH": 1, "D": 64}, "float32", use_cache=False).strategy
        'scan'
    """
    profile = gpu if isinstance(gpu, GpuProfile) else load_profile(gpu)
    problem = problem_of(plan, shape, dtype)
    _check_memory(plan, problem, profile)
    key = _cache_key(plan, profile, problem)
    models: dict[bool, Model] = {}  # built on first need: a cache hit needs none until runners-up are asked for
    chosen = [False]  # whether the answer needed a kernel variant that is not built yet

    def model_of(extended: bool) -> Model:
        if extended not in models:
            models[extended] = BUILDERS[plan.strategy](problem, profile, extended)
        return models[extended]

    def the_model() -> Model:
        return model_of(chosen[0])

    def model_for(params: dict) -> Model:  # the model an answer came from: runners-up of the same kind
        built = model_of(False)
        return built if all(params.get(v.name) in v.domain for v in built.variables) else model_of(True)

    later = _Later(model_for, profile, candidates, find_binding)
    shape = {k: shape[k] for k in ("B", "T", "NH", *plan.ir.dims)}
    expected = dict(cell=plan.ir.cell, strategy=plan.strategy, gpu=profile.name, dtype=dtype, shape=shape)
    cached = _read_cache(key, later, model_of, expected) if use_cache else None
    if cached is not None:
        return cached
    closest = None  # the built kernels' least-bad tiling, when the answer is a variant not built yet
    try:  # the kernels that exist first; variants still to be built only when none of those fits
        best = model_of(False).solve()
        if best is None:
            chosen[0] = True
            best = model_of(True).solve()
            closest = _least_spilling(model_of(False)) if best is not None else None
    except OverflowError as exc:  # a shape so large that the cost model's integers do not fit
        raise TilingError(f"the shape is too large for the cost model of {plan.strategy}: {exc}") from None
    if best is None:
        raise TilingError(diagnose(the_model(), plan, problem, profile))
    tiling = Tiling(
        **expected,
        params=dict(best.values),
        estimate_us=best.objective * the_model().unit_ns / 1000,
        quantities={k: v.evaluate(best.values) for k, v in the_model().quantities.items()},
        built=closest.values if closest is not None else None,
        later=later,
    )
    later.tiling = tiling
    if use_cache:
        _write_cache(key, tiling)
    return tiling


class _Later:
    """Computes a tiling's runners-up and binding constraints on first use (in this process: the cache
    holds the optimum only, which is what a launch needs)."""

    def __init__(self, model_for, profile: GpuProfile, count: int, find_binding: bool):
        self.model_for, self.profile, self.count, self.find_binding = model_for, profile, count, find_binding
        self.tiling: Tiling | None = None

    def __call__(self, what: str) -> tuple:
        params = self.tiling.params
        model = self.model_for(params)
        if what == "candidates":
            found = model.best(self.count + 1, start=[params])
            unit = model.unit_ns / 1000
            result = tuple((dict(s.values), s.objective * unit) for s in found[1:])
        elif not self.find_binding:
            return ()
        else:
            solution = model.solution_at(params)
            result = tuple(describe(c, params, self.profile) for c in model.binding(solution))
        return result


def _least_spilling(model: Model):
    """The built kernels' tiling that spills least: every budget but the registers kept, the register
    pressure (wanted over what a thread can get) minimised; else the one breaking the budgets least."""
    found = model.solve(drop=REGISTER_BUDGETS, minimise=model.quantities["register pressure"])
    return found if found is not None else model.closest()


def build_model(plan: Plan, gpu: str | GpuProfile, shape: dict, dtype: str) -> Model:
    """The tiling model of ``plan``'s strategy at ``shape`` on ``gpu`` (its variables, constraints, quantities),
    with the variants that are not built yet.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> plan = analyse_source(open("examples/gla.rnn").read())
        >>> [v.name for v in build_model(plan, "h100", {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128},
        ...                                "bfloat16").variables]
        ['CHUNK', 'BK', 'BV', 'num_warps', 'num_stages']
    """
    profile = gpu if isinstance(gpu, GpuProfile) else load_profile(gpu)
    return BUILDERS[plan.strategy](problem_of(plan, shape, dtype), profile)


def effective_params(strategy: str, launch, tiling: dict, model: Model) -> dict | None:
    """The model's variables at the values one kernel launch (``rnnc.runtime.dry_run.Launch``) really
    used, the rest from ``tiling``; None when a launched value lies outside the model's domain.

    The launchers may depart from the model: the chunked kernels keep the key dimension whole and
    cap per-channel-decay chunks; the scan kernels turn BLOCK_C into one block per state axis;
    a split sequential head shows as the grid's third axis, and the sequential step kernels (those
    that take BLOCK_K) stream their weights in BLOCK_K pieces while the whole-head kernel holds them
    whole; num_stages is Triton's default when the launcher passes none.
    """
    constexprs, options = launch.constexprs, launch.options
    values = {k: v for k, v in tiling.items() if k in {var.name for var in model.variables}}
    values.update({k: v for k, v in constexprs.items() if k in values})
    values["num_warps"] = options.get("num_warps", 4)
    values["num_stages"] = options.get("num_stages", 3)
    if strategy == "scan":
        blocks = [v for k, v in constexprs.items() if k.startswith("BLOCK_") and k != "BLOCK_T"]
        values["BLOCK_C"] = math.prod(blocks)
    if strategy == "sequential":  # the step kernels stream their weights, the whole-head kernel holds them
        values["SPLIT"] = launch.grid[2] if len(launch.grid) > 2 else 1
        values["STREAM_WEIGHTS"] = int("BLOCK_K" in constexprs)
        block_k = next(v for v in model.variables if v.name == "BLOCK_K")
        values["BLOCK_K"] = (
            constexprs.get("BLOCK_K", block_k.domain[-1]) if values["STREAM_WEIGHTS"] else block_k.domain[-1]
        )
    for var in model.variables:
        if var.name not in values or values[var.name] not in var.domain:
            return None
    return values


def memory_needed(plan: Plan, problem: Problem) -> int:
    """Bytes of device memory one call's tensors take: inputs, outputs, weights and states (no scratch).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.constraints.problem import problem_of
        >>> plan = analyse_source(open("examples/hgrn.rnn").read())
        >>> memory_needed(plan, problem_of(plan, {"B": 2, "T": 4, "NH": 1, "D": 8}, "float32"))
        896
    """
    steps = problem.B * problem.T * problem.NH * (problem.in_elems + problem.out_elems) * problem.bytes
    weights = problem.NH * problem.weight_elems * problem.bytes
    states = 2 * problem.B * problem.NH * problem.state_elems * max(4, problem.bytes)  # initial and final
    return steps + weights + states


def _check_memory(plan: Plan, problem: Problem, profile: GpuProfile) -> None:
    needed = memory_needed(plan, problem)
    if needed > profile.memory_bytes:
        raise TilingError(
            f"no kernel of {plan.ir.cell} can run this call on the {profile.full_name}: its inputs, outputs, "
            f"weights and states need {needed / 2**30:.1f} GiB of device memory, the "
            f"{profile.name} has {profile.memory_bytes / 2**30:.1f} GiB"
        )


def _plan_key(plan: Plan) -> str:
    if id(plan) not in _PLAN_KEYS or _PLAN_KEYS[id(plan)][0] is not plan:
        _PLAN_KEYS[id(plan)] = (plan, plan.key())  # the plan is kept alive, so its id is never reused
    return _PLAN_KEYS[id(plan)][1]


def _cache_key(plan: Plan, profile: GpuProfile, problem: Problem) -> str:
    text = "|".join([MODEL_VERSION, _plan_key(plan), profile.key(), problem.key()])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache_path(key: str) -> Path:
    return config.cache_dir() / "tilings" / f"{key}.json"


def _read_cache(key: str, later: _Later, model_of, expected: dict) -> Tiling | None:
    """The cached tiling under ``key`` if every field is what the model gives for ``expected``; a corrupt
    entry (bad JSON, wrong or missing fields, values outside their domains or budgets) is deleted."""
    path = _cache_path(key)
    try:
        data = parse_json(path.read_text())
        problem = fields_problem(data, FIELDS)
        checks = {**expected, "candidates": later.count, "find_binding": later.find_binding}
        problem = problem or tiling_problem(data, model_of(True), checks, built_model=model_of(False))
        if problem is None:
            tiling = Tiling.from_json(json.dumps(data), later=later)
            later.tiling = tiling
            return tiling
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        problem = f"cannot read it ({type(exc).__name__}: {exc})"
    config.debug(1, f"tiling cache: discarded {path}: {problem}")
    try:  # a corrupt entry is discarded and rebuilt, never trusted
        path.unlink()
    except OSError:
        pass
    return None


def _write_cache(key: str, tiling: Tiling) -> None:
    path = _cache_path(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            f.write(tiling.to_json(complete=False))
        os.replace(tmp, path)  # atomic: readers see the old entry or the new one, never half
    except OSError:
        pass  # a cache that cannot be written is only slower


__all__ = ["Tiling", "build_model", "effective_params", "memory_needed", "solve_tiling"]
