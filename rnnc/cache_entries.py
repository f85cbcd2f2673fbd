"""Checking what the caches read back: every field against the key it was found under and its domain.

Both caches (tilings, ``rnnc/constraints/tiling.py``; tuned winners, ``rnnc/tuning_cache.py``) store
JSON that anything with write access to the cache directory can change. An entry is trusted only
when it could have been written by rnnc for the key it was found under: the right fields and no
others, numbers where numbers belong (a ``true`` is no 1, a ``16.5`` no block size), sizes
positive, block sizes powers of two, times finite and positive, parameter names the kernels know.
Whatever fails is reported (the caller deletes the entry and rebuilds it), never used.

Example:
    >>> launch_params_problem({"BLOCK_T": 16, "num_warps": 4}) is None
    True
    >>> launch_params_problem({"BLOCK_T": -5})
    'BLOCK_T needs a power of two >= 1, has -5'
    >>> parse_json("[" * 100000 + "]" * 100000)
    Traceback (most recent call last):
    ...
    ValueError: nested too deeply to parse
"""

from __future__ import annotations

import json
import math

# the launch parameters a tiling or a tuned winner may set, and what each must be for the kernels to launch
LAUNCH_PARAMETERS = {
    "BLOCK_B": "power of two",  # sequential: batch rows per program
    "SPLIT": "positive",  # sequential: programs sharing a head
    "BLOCK_K": "power of two",  # sequential: pieces of the contraction
    "STREAM_WEIGHTS": "flag",  # sequential: 0 (weights kept on chip) or 1 (read again every step)
    "BLOCK_C": "power of two",  # scan: state entries per program
    "BLOCK_T": "power of two",  # scan: steps per associative scan
    "CHUNK": "power of two",  # chunked: steps per chunk
    "BK": "power of two",  # chunked: pieces of the key dimension
    "BV": "power of two",
    "num_warps": "power of two",
    "num_stages": "positive",
}


def parse_json(text: str | bytes) -> object:
    """``json.loads``, with nesting too deep for Python's stack a ValueError like any other bad text.

    Example:
        >>> parse_json('{"a": 1}')
        {'a': 1}
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to parse") from None


def is_int(value: object) -> bool:
    """An int that is not a bool (JSON's ``true`` reads as True, which Python counts as 1).

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_positive(value: object) -> bool:
    """A number (not a bool) that is finite and > 0 (JSON's ``Infinity`` and ``NaN`` are not).

    Example:
        >>> is_finite_positive(2.5), is_finite_positive(float("inf")), is_finite_positive(0)
        (True, False, False)
    """
    if is_int(value):
        return value > 0
    return isinstance(value, float) and math.isfinite(value) and value > 0


def launch_params_problem(params: object) -> str | None:
    """Why ``params`` cannot be a tiling's launch parameters (None when they can).

    Example:
        >>> launch_params_problem({"BLOCK_T": True}), launch_params_problem({"BLOCK": 16})
        ('BLOCK_T needs a power of two >= 1, has True', "has the unknown launch parameter 'BLOCK'")
    """
    if not isinstance(params, dict) or not params:
        return f"needs non-empty params (a JSON object), has {params!r}"
    for name, value in params.items():
        kind = LAUNCH_PARAMETERS.get(name)
        if kind is None:
            return f"has the unknown launch parameter {name!r}"
        if kind == "power of two" and not (is_int(value) and value >= 1 and value & (value - 1) == 0):
            return f"{name} needs a power of two >= 1, has {value!r}"
        if kind == "positive" and not (is_int(value) and value >= 1):
            return f"{name} needs an integer >= 1, has {value!r}"
        if kind == "flag" and not (is_int(value) and value in (0, 1)):
            return f"{name} needs 0 or 1, has {value!r}"
    return None


def fields_problem(entry: object, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> str | None:
    """Why ``entry`` is not a JSON object with exactly the ``required`` fields and some ``optional`` ones.

    Example:
        >>> fields_problem({"a": 1, "c": 2}, ("a", "b"))
        'needs the fields b; has the unknown fields c'
    """
    if not isinstance(entry, dict):
        return f"needs a JSON object, has {type(entry).__name__}"
    missing = [f for f in required if f not in entry]
    unknown = sorted(str(f) for f in entry if f not in required and f not in optional)
    parts = [f"needs the fields {', '.join(missing)}"] * bool(missing) + [
        f"has the unknown fields {', '.join(unknown)}"
    ] * bool(unknown)
    return "; ".join(parts) or None


def tiling_problem(entry: dict, model, expected: dict, built_model=None) -> str | None:
    """Why a cached tiling cannot be the answer of ``model`` for ``expected`` (None when it can).

    ``expected`` holds the fields the key fixes (cell, strategy, gpu, dtype, shape), how many
    ``candidates`` were asked for and ``find_binding``. The parameters must be an assignment of
    the model's variables within their domains that meets every constraint, and the estimate,
    the quantities and each runner-up's estimate must be what the model gives for them. Runners-up
    and binding constraints may be null (computed when first read). ``built`` (the built kernels'
    stand-in for an answer not built yet) must be an assignment of ``built_model`` that meets
    every budget but the registers (it is the one that spills least).
    """
    for name in ("cell", "strategy", "gpu", "dtype", "shape"):
        if entry[name] != expected[name]:
            return f"its {name} {entry[name]!r} is not the key's {expected[name]!r}"
    if not all(is_int(v) for v in entry["shape"].values()):  # True == 1 in Python: equal is not enough
        return f"needs integer sizes in its shape, has {entry['shape']!r}"
    problem = _assignment_problem(entry["params"], entry["estimate_us"], model, "params")
    if problem:
        return problem
    candidates = entry["candidates"]
    if candidates is not None and (not isinstance(candidates, list) or len(candidates) > expected["candidates"]):
        return f"needs a list of at most {expected['candidates']} candidates, has {candidates!r}"
    for i, candidate in enumerate(candidates or ()):
        if not (isinstance(candidate, list) and len(candidate) == 2):
            return f"candidate {i} needs [params, estimate_us], has {candidate!r}"
        problem = _assignment_problem(candidate[0], candidate[1], model, f"candidate {i}")
        if problem:
            return problem
    binding = entry["binding"] if entry["binding"] is not None else []
    if not isinstance(binding, list) or not all(isinstance(b, str) for b in binding):
        return f"needs binding constraints as a list of text, has {binding!r}"
    if binding and not expected["find_binding"]:
        return "has binding constraints where none were asked for"
    built = entry.get("built")
    if built is not None:
        problem = _built_problem(built, built_model)
        if problem:
            return problem
    quantities = {k: v.evaluate(entry["params"]) for k, v in model.quantities.items()}
    if entry["quantities"] != quantities:
        return f"its quantities {entry['quantities']!r} are not the model's {quantities!r}"
    return None


def _built_problem(built: object, model) -> str | None:
    from rnnc.constraints.common import REGISTER_BUDGETS

    problem = launch_params_problem(built)
    if problem or model is None:
        return f"built: {problem or 'no model of the built kernels to check it against'}"
    if sorted(built) != sorted(v.name for v in model.variables):
        return f"built needs the parameters {', '.join(v.name for v in model.variables)}, has {', '.join(built)}"
    for var in model.variables:
        if built[var.name] not in var.domain:
            return f"built: {var.name} needs one of {list(var.domain)}, has {built[var.name]!r}"
    broken = [c.name for c in model.constraints if c.name not in REGISTER_BUDGETS and not c.holds(built)]
    return f"built breaks {', '.join(broken)}" if broken else None


def _assignment_problem(params: object, estimate: object, model, what: str) -> str | None:
    problem = launch_params_problem(params)
    if problem:
        return f"{what}: {problem}"
    names = [v.name for v in model.variables]
    if sorted(params) != sorted(names):
        return f"{what} needs the parameters {', '.join(names)}, has {', '.join(params)}"
    for var in model.variables:
        if params[var.name] not in var.domain:
            return f"{what}: {var.name} needs one of {list(var.domain)}, has {params[var.name]!r}"
    memo: dict = {}
    broken = [c.name for c in model.constraints if not c.holds(params, memo)]
    if broken:
        return f"{what} break {', '.join(broken)}"
    if not is_finite_positive(estimate):
        return f"{what} needs a finite positive estimate_us, has {estimate!r}"
    modelled = model.objective.evaluate(params, memo) * model.unit_ns / 1000
    if not math.isclose(estimate, modelled, rel_tol=1e-9):
        return f"{what}: estimate_us {estimate!r} is not the model's {modelled!r}"
    return None
