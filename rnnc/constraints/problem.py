"""What a tiling model needs to know about a cell at one call shape.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> plan = analyse_source(open("examples/lstm.rnn").read())
    >>> p = problem_of(plan, {"B": 16, "T": 1024, "NH": 12, "H": 64}, "bfloat16")
    >>> p.hidden, p.gates, p.state_elems, p.in_elems
    (64, 4, 128, 256)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import sympy

from rnnc.compiler import Plan
from rnnc.constraints.profiles import DTYPE_BYTES, DTYPES
from rnnc.errors import RnncError


@dataclass(frozen=True)
class Problem:
    """Sizes of one call of a cell, per (batch row, head) unless said otherwise."""

    cell: str
    strategy: str
    B: int
    T: int
    NH: int
    dims: tuple[tuple[str, int], ...]
    dtype: str
    in_elems: int  # input elements per step
    out_elems: int  # output elements per step
    state_elems: int  # elements of all states
    weight_elems: int  # elements of all weights (per head)
    tensors: int = 0  # declared inputs, weights and states: the values a program holds per element
    hidden: int = 0  # sequential: width contracted by the recurrent matmuls
    gates: int = 0  # sequential: recurrent outputs per hidden unit
    key_dim: int = 0  # chunked: K of the matrix state
    value_dim: int = 0  # chunked: V of the matrix state
    rank_one: bool = False  # chunked: identity-minus-rank-one transition
    decay: str = ""  # chunked: identity, scalar or diagonal

    @property
    def bytes(self) -> int:
        """Bytes of one input or output element."""
        return DTYPE_BYTES[self.dtype]

    def key(self) -> str:
        """Canonical text of the problem (for caches)."""
        return repr(self)


def next_pow2(n: int, least: int = 1) -> int:
    """The smallest power of two >= max(n, least).

    Example:
        >>> next_pow2(48), next_pow2(3, least=16)
        (64, 16)
    """
    return max(least, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def problem_of(plan: Plan, shape: dict[str, int], dtype: str) -> Problem:
    """The Problem of ``plan`` at ``shape`` (B, T, NH and every dim).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> plan = analyse_source(open("examples/gla.rnn").read())
        >>> p = problem_of(plan, {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}, "bfloat16")
        >>> p.key_dim, p.value_dim, p.decay
        (128, 128, 'diagonal')
    """
    ir = plan.ir
    if dtype not in DTYPES:
        raise RnncError(f"dtype needs one of {', '.join(DTYPES)}, has {dtype!r}")
    needed = ["B", "T", "NH", *ir.dims]
    missing = [n for n in needed if n not in shape]
    if missing:
        raise RnncError(f"the shape of cell {ir.cell} needs {', '.join(needed)}; missing {', '.join(missing)}")
    for name in needed:
        if not isinstance(shape[name], int) or shape[name] < 1:
            raise RnncError(f"shape {name} needs a positive integer, has {shape[name]!r}")
    subs = {sympy.Symbol(d, positive=True, integer=True): shape[d] for d in ir.dims}

    def size(dims) -> int:
        return int(math.prod(int(sympy.sympify(d).subs(subs)) for d in dims))

    common = dict(
        cell=ir.cell,
        strategy=plan.strategy,
        B=shape["B"],
        T=shape["T"],
        NH=shape["NH"],
        dims=tuple((d, shape[d]) for d in ir.dims),
        dtype=dtype,
        in_elems=sum(size(d.shape) for d in ir.inputs),
        out_elems=sum(size(r.shape) for r in ir.outputs),
        state_elems=sum(size(d.shape) for d in ir.states),
        weight_elems=sum(size(d.shape) for d in ir.weights),
        tensors=len(ir.inputs) + len(ir.weights) + len(ir.states),
    )
    if plan.strategy == "sequential":
        hidden, gates = _recurrent_matmuls(plan, size)
        return Problem(**common, hidden=hidden, gates=gates)
    if plan.strategy == "chunked":
        matrix = next(t for t in plan.transitions if t.rank == 2)
        k, v = (size((d,)) for d in ir.update(matrix.state).shape)
        decay = matrix.decay if matrix.structure == "identity-minus-rank-one" else matrix.structure
        rank_one = matrix.structure == "identity-minus-rank-one"
        return Problem(**common, key_dim=k, value_dim=v, rank_one=rank_one, decay=decay)
    return Problem(**common)


def _recurrent_matmuls(plan: Plan, size) -> tuple[int, int]:
    """(contraction width, outputs per hidden unit) of the matmuls between weights and states."""
    ir = plan.ir
    stateful: set[str] = set()
    weights = {d.name for d in ir.weights}
    hidden, outputs = 0, 0
    for atom in ir.atoms:
        reads = [{ir.view(s).atom for s in ir.view_symbols(arg)} for arg in atom.args]
        if atom.op == "state" or any(r & stateful for r in reads):
            stateful.add(atom.name)
        if atom.op != "matmul":
            continue
        sides = [bool(r & stateful) for r in reads]
        constant = [r <= weights for r in reads]
        if any(sides) and any(constant):
            contraction = size((atom.arg_shapes[0][-1],))
            hidden = max(hidden, contraction)
            outputs += size(atom.shape)
    gates = max(1, outputs // hidden) if hidden else 0
    return hidden, gates
