"""What the chunked kernels compute, read off a chunked stage's pieces: rows, entries, queries, outputs.

The analysis hands a chunked stage its linear states (``LinearState``: factors ``D + c u w^T`` and
writes ``scale * outer(key, value)``) and its outputs (``OutputPiece``: an expression over step
values and reads ``query @ S`` of old or new states). This module only *reads* those pieces into
the form the kernels work in; it recognises no cell.

**Rows.** A step with n factors is n rows (padded to a power of two with identity rows in front):
row f applies factor f and its writes (``S_f = A_f S_{f-1} + B_f``). A factor's rank-one
correction ``c u (w^T S)`` is an *entry* of its row whose value ``w^T S`` is a read of the state
after the previous row; a write is an entry with a known value. A read of the new state sits at
the step's last row, a read of the old state at its first row, one row earlier (strict mask).

**Leaves** are what the pieces read per step: inputs, weights, the old (``s``) and new (``s'``)
values of earlier components' states, dims read as numbers. **Spaces**: a piece lives in the key
space ``[K]``, the value space ``[V]`` or the scalar space; a leaf of shape ``[D]`` is loaded in
whichever of the key and value spaces its pieces need (both, for a square state).
**Reductions** (``r @ (u * k)``, ``sum(k * k)``) are scalar pieces of their own, computed before
the pieces that use them.

Example:
    >>> import sympy
    >>> from rnnc.compiler.components import Factor, LinearState, Write
    >>> from rnnc.compiler.symbols import tensor_symbol as t
    >>> K, V = sympy.symbols("K V", positive=True, integer=True)
    >>> S = LinearState("S", 0, K, V, (Factor("scalar", t("g"), True, (), (Write(1, t("k"), t("v")),)),))
    >>> rows = state_rows(S, 1)
    >>> rows.decay, rows.steps[0].log_decay, rows.vector
    ('scalar', g, False)
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.components import LinearState, OutputPiece, new_value_symbol
from rnnc.compiler.nested import show
from rnnc.compiler.shapes import same_dim
from rnnc.compiler.shapes import show as show_shape
from rnnc.templates.chunked_reductions import Reduction, Reductions, check_spaces, unsupported

DECAY_ORDER = ("identity", "scalar", "diagonal")
SPACES = ("scalar", "key", "value")


@dataclass(frozen=True)
class Leaf:
    """A per-step value the pieces read: an input, a weight, an earlier state's old or new value, a dim."""

    name: str  # the symbol's name in the pieces: q, m, m', K
    role: str  # input | weight | earlier | dim
    shape: tuple  # its declared shape (no batch, time or head axes)
    state: str = ""  # for role earlier: the state, and whether this is its new value
    new: bool = False


@dataclass(frozen=True)
class SubStep:
    """One factor of a state's transition: ``D + scale * u w^T`` with ``D`` from ``log_decay``."""

    decay: str  # identity | scalar | diagonal
    log_decay: sympy.Expr | None
    correction: tuple[sympy.Expr, sympy.Expr, sympy.Expr] | None  # (scale, u, w) or None


@dataclass(frozen=True)
class StateRows:
    """A linear state as rows: its factors (identity rows first up to ``n_sub``), their writes, its layout."""

    name: str
    key_axis: int  # 0: stored [K, V]; 1: stored [V, K]
    vector: bool  # a [K] state (one value column)
    decay: str  # the widest decay of its factors
    steps: tuple[SubStep, ...]  # exactly n_sub of them
    writes: tuple[tuple[int, sympy.Expr, sympy.Expr, sympy.Expr | None], ...]  # (row, scale, key, value)

    @property
    def corrected(self) -> bool:
        """Whether any factor has a rank-one correction (a triangular solve per chunk)."""
        return any(s.correction is not None for s in self.steps)


@dataclass(frozen=True)
class ReadSpec:
    """``query @ state`` of the old or new value: a [V] (or, for a vector state, scalar) per step."""

    symbol: str
    state: str
    new: bool
    query: sympy.Expr


@dataclass(frozen=True)
class OutputSpec:
    """An output: ``expr`` in ``space`` over leaves, reductions and read symbols."""

    name: str
    space: str
    shape: tuple
    expr: sympy.Expr


@dataclass(frozen=True)
class ChunkedSpec:
    """Everything the chunked kernels of one stage compute."""

    cell: str
    key_dim: sympy.Expr
    value_dim: sympy.Expr | None
    n_sub: int
    leaves: tuple[Leaf, ...]
    states: tuple[StateRows, ...]
    reads: tuple[ReadSpec, ...]
    outputs: tuple[OutputSpec, ...]
    reductions: tuple[Reduction, ...]

    def leaf(self, name: str) -> Leaf:
        """The leaf called ``name``."""
        return next(x for x in self.leaves if x.name == name)

    def state(self, name: str) -> StateRows:
        """The state called ``name``."""
        return next(s for s in self.states if s.name == name)

    def pieces(self) -> list[tuple[str, sympy.Expr, str]]:
        """Every piece as (label, expression, space), in a fixed order (what the kernels print)."""
        out = []
        for s in self.states:
            for f, step in enumerate(s.steps):
                if step.log_decay is not None:
                    out.append(
                        (f"{s.name}.log_decay{f}", step.log_decay, "key" if step.decay == "diagonal" else "scalar")
                    )
                if step.correction is not None:
                    scale, u, w = step.correction
                    out += [
                        (f"{s.name}.c{f}", scale, "scalar"),
                        (f"{s.name}.u{f}", u, "key"),
                        (f"{s.name}.w{f}", w, "key"),
                    ]
            for j, (_, scale, key, value) in enumerate(s.writes):
                out += [(f"{s.name}.scale{j}", scale, "scalar"), (f"{s.name}.key{j}", key, "key")]
                if value is not None:
                    out.append((f"{s.name}.value{j}", value, "value"))
        out += [(f"{r.symbol}.query", r.query, "key") for r in self.reads]
        out += [(f"{o.name}", o.expr, o.space) for o in self.outputs]
        return out


def state_rows(state: LinearState, n_sub: int, cell: str = "?") -> StateRows:
    """A linear state's factors as ``n_sub`` rows (identity rows first), and its writes.

    Example:
        >>> import sympy
        >>> from rnnc.compiler.components import Factor, LinearState, RankOne, Write
        >>> from rnnc.compiler.symbols import tensor_symbol as t
        >>> K = sympy.Symbol("K", positive=True, integer=True)
        >>> delta = Factor("identity", None, True, (RankOne(-t("b"), t("k"), t("k")),), (Write(t("b"), t("k"), None),))
        >>> rows = state_rows(LinearState("n", 0, K, None, (delta,)), 2)
        >>> [s.correction is None for s in rows.steps], rows.vector, rows.corrected, rows.writes[0][0]
        ([True, False], True, True, 1)
    """
    steps, writes = [], []
    pad = n_sub - len(state.factors)
    for f, factor in enumerate(state.factors):
        if factor.decay not in DECAY_ORDER:
            raise unsupported(cell, f"needs a decay of {', '.join(DECAY_ORDER)} for {state.state}, has {factor.decay}")
        if len(factor.corrections) > 1:
            terms = " + ".join(f"({show(r.scale)}) {show(r.u)} {show(r.w)}^T" for r in factor.corrections)
            raise unsupported(
                cell,
                f"needs at most one rank-one correction per factor of {state.state}'s transition, has {terms}",
            )
        correction = None
        if factor.corrections:
            r = factor.corrections[0]
            correction = (sympy.sympify(r.scale), sympy.sympify(r.u), sympy.sympify(r.w))
        log_decay = None if factor.decay == "identity" else sympy.sympify(factor.log_decay)
        steps.append(SubStep(factor.decay, log_decay, correction))
        writes += [
            (pad + f, sympy.sympify(w.scale), sympy.sympify(w.key), None if w.value is None else sympy.sympify(w.value))
            for w in factor.writes
        ]
    if len(steps) > n_sub:
        raise ValueError(f"{state.state} has {len(steps)} factors, more than {n_sub} rows per step")
    steps = [SubStep("identity", None, None)] * pad + steps
    decay = max((s.decay for s in steps), key=DECAY_ORDER.index)
    return StateRows(state.state, state.key_axis, state.value_dim is None, decay, tuple(steps), tuple(writes))


def rows_per_step(states) -> int:
    """Rows per step: the most factors of any state, rounded up to a power of two (at least 1).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> rows_per_step([NS(factors=(1, 2, 3)), NS(factors=())])
        4
    """
    most = max([len(s.factors) for s in states] + [1])
    return 1 << (most - 1).bit_length()


def build_spec(ir, states: tuple[LinearState, ...], outputs: tuple[OutputPiece, ...]) -> ChunkedSpec:
    """The :class:`ChunkedSpec` of a chunked stage: its linear states and output pieces, over ``ir``'s leaves.

    Example:
        >>> import sympy
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.components import Factor, LinearState, OutputPiece, Read, Write
        >>> from rnnc.compiler.symbols import tensor_symbol as t
        >>> ir = lower_source(open("examples/retnet.rnn").read())
        >>> K, V = (sympy.Symbol(d, positive=True, integer=True) for d in "KV")
        >>> S = LinearState("S", 0, K, V, (Factor("scalar", t("log_gamma"), True, (), (Write(1, t("k"), t("v")),)),))
        >>> o = OutputPiece("o", (V,), t("r"), (Read(t("r"), "S", True, t("q")),))
        >>> spec = build_spec(ir, (S,), (o,))
        >>> [(x.name, x.role) for x in spec.leaves], spec.outputs[0].space
        ([('q', 'input'), ('k', 'input'), ('v', 'input'), ('log_gamma', 'weight'), ('K', 'dim'), ('V', 'dim')], 'value')
    """
    cell = ir.cell
    if not states:
        raise unsupported(cell, "needs at least one linear state in the stage, has none")
    key_dims = [s.key_dim for s in states]
    if any(not same_dim(d, key_dims[0]) for d in key_dims):
        raise unsupported(cell, f"needs one key dim for the stage's states, has {', '.join(map(str, key_dims))}")
    value_dims = [s.value_dim for s in states if s.value_dim is not None]
    if any(not same_dim(d, value_dims[0]) for d in value_dims):
        raise unsupported(cell, f"needs one value dim for the stage's states, has {', '.join(map(str, value_dims))}")
    key_dim = key_dims[0]
    value_dim = value_dims[0] if value_dims else None
    n_sub = rows_per_step(states)
    rows = tuple(state_rows(s, n_sub, cell) for s in states)
    names = {s.name for s in rows}

    reads: list[ReadSpec] = []
    specs: list[OutputSpec] = []
    for out in outputs:
        for read in out.reads:
            if read.state not in names:
                raise unsupported(cell, f"output {out.name} reads {read.state}, which is not a state of this stage")
            if read.symbol.name not in {r.symbol for r in reads}:
                reads.append(ReadSpec(read.symbol.name, read.state, read.new, sympy.sympify(read.query)))
        specs.append(OutputSpec(out.name, _output_space(cell, out, key_dim, value_dim), tuple(out.shape), out.expr))

    leaves = _leaves(ir, names)
    reductions: dict[sympy.Expr, Reduction] = {}
    extractor = Reductions(cell, leaves, key_dim, value_dim, reductions)
    rows = tuple(
        StateRows(
            s.name,
            s.key_axis,
            s.vector,
            s.decay,
            tuple(
                SubStep(
                    st.decay,
                    extractor(st.log_decay),
                    None if st.correction is None else tuple(extractor(e) for e in st.correction),
                )
                for st in s.steps
            ),
            tuple((row, extractor(a), extractor(b), extractor(c)) for row, a, b, c in s.writes),
        )
        for s in rows
    )
    reads = [ReadSpec(r.symbol, r.state, r.new, extractor(r.query)) for r in reads]
    read_symbols = {r.symbol for r in reads}
    specs = [OutputSpec(o.name, o.space, o.shape, extractor(o.expr, read_symbols)) for o in specs]
    used = set()
    for piece in [*_all_exprs(rows, reads, specs), *(r.summand for r in reductions.values())]:
        used |= {s.name for s in piece.free_symbols}
    spec = ChunkedSpec(
        cell,
        key_dim,
        value_dim,
        n_sub,
        tuple(x for x in leaves if x.name in used or x.role == "dim"),  # dims size the tiles
        rows,
        tuple(reads),
        tuple(specs),
        tuple(reductions.values()),
    )
    check_spaces(spec)
    return spec


def _all_exprs(rows, reads, outputs):
    for s in rows:
        for st in s.steps:
            if st.log_decay is not None:
                yield st.log_decay
            if st.correction is not None:
                yield from st.correction
        for _, *w in s.writes:
            yield from (e for e in w if e is not None)
    yield from (r.query for r in reads)
    yield from (o.expr for o in outputs)


def _output_space(cell, out: OutputPiece, key_dim, value_dim) -> str:
    shape = tuple(out.shape)
    if shape == ():
        return "scalar"
    if len(shape) == 1 and value_dim is not None and same_dim(shape[0], value_dim):
        return "value"
    if len(shape) == 1 and same_dim(shape[0], key_dim):
        return "key"
    raise unsupported(
        cell, f"needs outputs of shape [], [{key_dim}] or [{value_dim}], has {out.name} {show_shape(shape)}"
    )


def _leaves(ir, stage_states: set[str]) -> list[Leaf]:
    """Every symbol a piece may read: inputs, weights, earlier states (old and new), dims."""
    leaves = [Leaf(d.name, "input", tuple(d.shape)) for d in ir.inputs]
    leaves += [Leaf(d.name, "weight", tuple(d.shape)) for d in ir.weights]
    for d in ir.states:
        if d.name not in stage_states:
            leaves.append(Leaf(d.name, "earlier", tuple(d.shape), d.name, False))
            leaves.append(Leaf(new_value_symbol(d.name).name, "earlier", tuple(d.shape), d.name, True))
    leaves += [Leaf(d, "dim", ()) for d in ir.dims]
    return leaves


def stage_spec(plan) -> ChunkedSpec:
    """The :class:`ChunkedSpec` of a Plan's chunked stage, from the analysis' components.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> spec = stage_spec(analyse_source(open("examples/gated_deltanet.rnn").read()))
        >>> spec.states[0].decay, spec.states[0].corrected
        ('scalar', True)
    """
    chunked = [s for s in plan.stages if s.strategy == "chunked"]
    if len(chunked) != 1:
        raise unsupported(plan.ir.cell, f"needs one chunked stage, has {len(chunked)}")
    stage = chunked[0]
    components = {c.index: c for c in plan.components}
    states = tuple(ls for i in stage.components for ls in components[i].linear)
    return build_spec(plan.ir, states, tuple(stage.output_pieces))
