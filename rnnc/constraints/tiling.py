"""Solving for a tiling: the model of the cell's strategy, its best assignments, and why.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> plan = analyse_source(open("examples/lstm.rnn").read())
    >>> til = solve_tiling(plan, "h100", {"B": 16, "T": 1024, "NH": 12, "H": 64}, "bfloat16", use_cache=False)
    >>> til.params["BLOCK_B"], til.strategy, len(til.candidates) > 0
    (16, 'sequential', True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from rnnc import config
from rnnc.cache_entries import fields_problem, parse_json, tiling_problem
from rnnc.compiler import Plan
from rnnc.constraints import chunked, scan, sequential
from rnnc.constraints.model import Model, lift
from rnnc.constraints.problem import Problem, problem_of
from rnnc.constraints.profiles import GpuProfile, load_profile
from rnnc.errors import TilingError

MODEL_VERSION = "1"  # bump when a model changes: cached tilings of older models are not reused
BUILDERS = {"sequential": sequential.build_model, "scan": scan.build_model, "chunked": chunked.build_model}


@dataclass(frozen=True)
class Tiling:
    """The chosen launch and tile parameters, the cost model's estimate and the runners-up."""

    cell: str
    strategy: str
    gpu: str
    dtype: str
    shape: dict
    params: dict
    estimate_us: float
    candidates: tuple  # ({params}, estimate_us) of the next best, best first
    binding: tuple  # descriptions of the constraints that limit the optimum
    quantities: dict  # derived values at the optimum (registers, shared memory, programs...)

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys).

        Example:
            >>> t = Tiling("c", "scan", "h100", "float32", {"B": 1}, {"BLOCK_T": 16}, 1.0, (), (), {})
            >>> Tiling.from_json(t.to_json()) == t
            True
        """
        return json.dumps(asdict(self), sort_keys=True, indent=1)

    @staticmethod
    def from_json(text: str) -> "Tiling":
        """The inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["candidates"] = tuple((dict(p), float(e)) for p, e in data["candidates"])
        data["binding"] = tuple(data["binding"])
        return Tiling(**data)

    def explain(self) -> str:
        """The decision as text: parameters, estimate, binding constraints, runners-up."""
        shape = ", ".join(f"{k}={v}" for k, v in self.shape.items())
        lines = [f"tiling of {self.cell} ({self.strategy}) on {self.gpu}, {self.dtype}, {shape}:"]
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in self.params.items()))
        lines.append(f"  estimated time: {self.estimate_us:.1f} us (cost model)")
        lines += [f"  {k}: {v}" for k, v in self.quantities.items()]
        lines.append("binding constraints (the optimum would improve without them):")
        lines += [f"  {b}" for b in self.binding] or ["  none: the objective alone decided"]
        if self.candidates:
            lines.append("next best:")
            for params, estimate in self.candidates:
                lines.append(f"  {estimate:10.1f} us  " + ", ".join(f"{k}={v}" for k, v in params.items()))
        return "\n".join(lines)


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

    ``candidates`` runners-up are returned too; ``find_binding`` re-solves once per
    constraint to name those that limit the optimum (skip it when only params matter).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> plan = analyse_source(open("examples/hgrn.rnn").read())
        >>> solve_tiling(plan, "l4", {"B": 1, "T": 256, "NH": 1, "D": 64}, "float32", use_cache=False).strategy
        'scan'
    """
    profile = gpu if isinstance(gpu, GpuProfile) else load_profile(gpu)
    problem = problem_of(plan, shape, dtype)
    key = _cache_key(plan, profile, problem, f"{candidates}-{find_binding}")
    model = BUILDERS[plan.strategy](problem, profile)  # a millisecond; a cached entry is checked against it
    shape = {k: shape[k] for k in ("B", "T", "NH", *plan.ir.dims)}
    expected = dict(cell=plan.ir.cell, strategy=plan.strategy, gpu=profile.name, dtype=dtype, shape=shape)
    asked = {"candidates": candidates, "find_binding": find_binding}
    cached = _read_cache(key, model, {**expected, **asked}) if use_cache else None
    if cached is not None:
        return cached
    try:
        best = model.best(candidates + 1)
    except OverflowError as exc:  # a shape so large that the cost model's integers do not fit
        raise TilingError(f"the shape is too large for the cost model of {plan.strategy}: {exc}") from None
    if not best:
        raise TilingError(_diagnose(model, plan, problem, profile))
    tiling = Tiling(
        **expected,
        params=dict(best[0].values),
        estimate_us=best[0].objective * model.unit_ns / 1000,
        candidates=tuple((dict(s.values), s.objective * model.unit_ns / 1000) for s in best[1:]),
        binding=tuple(_describe(c, best[0].values, profile) for c in model.binding(best[0])) if find_binding else (),
        quantities={k: v.evaluate(best[0].values) for k, v in model.quantities.items()},
    )
    if use_cache:
        _write_cache(key, tiling)
    return tiling


def build_model(plan: Plan, gpu: str | GpuProfile, shape: dict, dtype: str) -> Model:
    """The tiling model of ``plan``'s strategy at ``shape`` on ``gpu`` (its variables, constraints, quantities).

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
    a split sequential head shows as the grid's third axis; num_stages is Triton's default when
    the launcher passes none.
    """
    constexprs, options = launch.constexprs, launch.options
    values = {k: v for k, v in tiling.items() if k in {var.name for var in model.variables}}
    values.update({k: v for k, v in constexprs.items() if k in values})
    values["num_warps"] = options.get("num_warps", 4)
    values["num_stages"] = options.get("num_stages", 3)
    if strategy == "scan":
        blocks = [v for k, v in constexprs.items() if k.startswith("BLOCK_") and k != "BLOCK_T"]
        values["BLOCK_C"] = math.prod(blocks)
    if strategy == "sequential":
        values["SPLIT"] = launch.grid[2] if len(launch.grid) > 2 else 1
    for var in model.variables:
        if var.name not in values or values[var.name] not in var.domain:
            return None
    return values


def _describe(constraint, values: dict, profile: GpuProfile) -> str:
    lhs, limit = constraint.values(values)
    unit = f" {constraint.unit}" if constraint.unit else ""
    return f"{constraint.name}: {lhs} <= {limit}{unit} ({constraint.reason})"


def _diagnose(model: Model, plan: Plan, problem: Problem, profile: GpuProfile) -> str:
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
    return f"{constraint.name}: {verb} {needed}{unit}, the {profile.name} allows {limit} ({constraint.reason})"


def _alternatives(plan: Plan, problem: Problem, profile: GpuProfile) -> list[str]:
    """Other strategies or dtypes under which the same cell would fit."""
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


def _cache_key(plan: Plan, profile: GpuProfile, problem: Problem, options: str) -> str:
    text = "|".join([MODEL_VERSION, plan.key(), profile.key(), problem.key(), options])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _cache_path(key: str) -> Path:
    return config.cache_dir() / "tilings" / f"{key}.json"


def _read_cache(key: str, model: Model, expected: dict) -> Tiling | None:
    """The cached tiling under ``key`` if every field is what ``model`` gives for ``expected``; a
    corrupt entry (bad JSON, wrong or missing fields, values outside their domains) is deleted."""
    path = _cache_path(key)
    try:
        data = parse_json(path.read_text())
        problem = fields_problem(data, tuple(f.name for f in fields(Tiling)))
        problem = problem or tiling_problem(data, model, expected)
        if problem is None:
            return Tiling.from_json(json.dumps(data))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError) as exc:
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
            f.write(tiling.to_json())
        os.replace(tmp, path)  # atomic: readers see the old entry or the new one, never half
    except OSError:
        pass  # a cache that cannot be written is only slower


__all__ = ["Tiling", "build_model", "effective_params", "solve_tiling"]
