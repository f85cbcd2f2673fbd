"""The pieces of a cell, grouped into components: what the analysis hands the templates.

A *component* is a strongly connected set of states (see ``docs/components.md``). Its kind
says how it runs; its pieces are sympy expressions in the nested form (``rnnc.compiler.nested``)
over the *step values*: inputs and weights (``tensor_symbol(name)``), the previous and new values
of earlier components' states (``tensor_symbol(s)``, :func:`new_value_symbol`), dims read as
numbers, and in-step reductions of those. Templates print and differentiate pieces; they never
look at the cell's spelling.

Example:
    >>> new_value_symbol("m")
    m'
    >>> Factor("scalar", sympy.Symbol("g"), True, ()).describe()
    'exp(g) I'
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy

from rnnc.compiler.nested import show
from rnnc.compiler.shapes import Shape
from rnnc.compiler.symbols import tensor_symbol
from rnnc.errors import Span

KINDS = ("elementwise", "coupled", "maxplus", "matrix", "coupled-linear", "nonlinear")
DECAYS = ("identity", "scalar", "diagonal")


def new_value_symbol(state: str) -> sympy.Symbol:
    """The symbol of a state's value after this step's update (``s'``; no leaf can be called so).

    Example:
        >>> new_value_symbol("c").name
        "c'"
    """
    return tensor_symbol(state + "'")


@dataclass(frozen=True)
class Affine:
    """``state' = a * state + b``, elementwise in the state's index space."""

    state: str
    a: sympy.Expr
    b: sympy.Expr


@dataclass(frozen=True)
class Coupled:
    """``states[i]' = sum_j m[i][j] * states[j] + b[i]``: an n x n map per channel."""

    states: tuple[str, ...]
    m: tuple[tuple[sympy.Expr, ...], ...]
    b: tuple[sympy.Expr, ...]


@dataclass(frozen=True)
class MaxPlus:
    """``state' = max(state + a, b)`` (``a`` is 0 for a running maximum)."""

    state: str
    a: sympy.Expr
    b: sympy.Expr


@dataclass(frozen=True)
class RankOne:
    """``scale * u w^T``: ``scale`` in the scalar space, ``u`` and ``w`` in the key space."""

    scale: sympy.Expr
    u: sympy.Expr
    w: sympy.Expr


@dataclass(frozen=True)
class Write:
    """``scale * outer(key, value)`` added to a linear state (``value`` None for a vector state)."""

    scale: sympy.Expr
    key: sympy.Expr
    value: sympy.Expr | None


@dataclass(frozen=True)
class Factor:
    """One step ``S_i = (D + sum_j c_j u_j w_j^T) S_{i-1} + sum writes`` of a linear state's update.

    ``decay`` is ``identity`` (D = I), ``scalar`` (D = exp(log_decay) I, log_decay in the scalar
    space) or ``diagonal`` (D = diag(exp(log_decay)), log_decay in the key space). ``positive``
    says whether the analysis proved the decay positive (else each call checks it: rnnc.runtime.decay_guard). Most
    cells have one factor; DeltaProduct has one per Householder step, each with its own writes.
    """

    decay: str
    log_decay: sympy.Expr | None
    positive: bool
    corrections: tuple[RankOne, ...] = ()
    writes: tuple[Write, ...] = ()

    def describe(self) -> str:
        """The factor in the language's notation.

        Example:
            >>> k, b = sympy.symbols("k beta")
            >>> Factor("identity", None, True, (RankOne(-b, k, k),)).describe()
            'I + (-beta) k k^T'
        """
        if self.decay == "identity":
            text = "I"
        elif self.decay == "scalar":
            text = f"exp({show(self.log_decay)}) I"
        else:
            text = f"diag(exp({show(self.log_decay)}))"
        for r in self.corrections:
            text += f" + ({show(r.scale)}) {show(r.u)} {show(r.w)}^T"
        return text


@dataclass(frozen=True)
class LinearState:
    """A matrix (or vector, V = 1) state updated by its factors in order, key axis first.

    ``key_axis`` is the state axis the transition and the reads contract (0 for ``[K, V]`` read
    as ``q @ S``; 1 for a state declared ``[V, K]`` and read as ``S @ q``). ``value_dim`` is None
    for a vector state.
    """

    state: str
    key_axis: int
    key_dim: sympy.Expr
    value_dim: sympy.Expr | None
    factors: tuple[Factor, ...]


@dataclass(frozen=True)
class Read:
    """``query @ state`` along the key axis, of the previous (``new=False``) or the new value."""

    symbol: sympy.Symbol
    state: str
    new: bool
    query: sympy.Expr


@dataclass(frozen=True)
class OutputPiece:
    """An output of a chunked stage: ``expr`` over step values and the ``reads``' symbols."""

    name: str
    shape: Shape
    expr: sympy.Expr
    reads: tuple[Read, ...]


@dataclass(frozen=True)
class Component:
    """A strongly connected set of states, its kind, the evidence for it, and its pieces."""

    index: int
    states: tuple[str, ...]
    kind: str
    evidence: tuple[str, ...]
    span: Span | None = field(default=None, compare=False, repr=False)
    affine: tuple[Affine, ...] = ()
    coupled: Coupled | None = None
    maxplus: MaxPlus | None = None
    linear: tuple[LinearState, ...] = ()


@dataclass(frozen=True)
class Blocker:
    """Why no kernel runs a stage: the component, the piece, the reason, where in the source."""

    component: int
    piece: str
    reason: str
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Stage:
    """Components one kernel runs (in order), the outputs it computes, and what blocks it."""

    strategy: str
    components: tuple[int, ...]
    outputs: tuple[str, ...]
    output_exprs: tuple[tuple[str, sympy.Expr], ...] = ()  # scan, sequential: nested, s' for new values
    output_pieces: tuple[OutputPiece, ...] = ()  # chunked: pointwise over step values and reads
    carries: tuple[str, ...] = ()  # states whose per-step values the later stages read
    blockers: tuple[Blocker, ...] = ()
