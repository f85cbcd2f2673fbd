"""Choosing the strategy of a cell from its transitions: sequential, scan or chunked.

Example:
    >>> from rnnc.compiler import lower_source
    >>> from rnnc.compiler.affine import analyse_states
    >>> ir = lower_source(open("examples/lti.rnn").read())
    >>> choose_strategy(ir, analyse_states(ir))[0]
    'sequential'
"""

from __future__ import annotations

import sympy

from rnnc.compiler.affine import SCALE, Transition
from rnnc.compiler.ir import IR
from rnnc.compiler.nested import nest, pull_scale, scale_terms, show
from rnnc.compiler.proof import Proof, outer_like, prove_chunked, prove_scan
from rnnc.compiler.symbols import Matmul

CHUNKABLE = ("identity", "scalar", "diagonal")


def choose_strategy(ir: IR, transitions: list[Transition]) -> tuple[str, tuple[str, ...], Proof | None]:
    """The strategy, the reasons for it (one line each) and the associativity proof.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.affine import analyse_states
        >>> ir = lower_source(open("examples/gla.rnn").read())
        >>> choose_strategy(ir, analyse_states(ir))[0]
        'chunked'
    """
    nonaffine = [t for t in transitions if not t.affine]
    if nonaffine:
        return "sequential", tuple(f"nonlinear: {t.describe()}" for t in nonaffine), None
    dense = [t for t in transitions if t.structure in ("dense", "coupled")]
    if dense:
        reasons = tuple(
            f"affine, but {t.state}'s transition is {t.structure} ({t.reason}); "
            "no dense scan exists yet, so it runs step by step"
            for t in dense
        )
        return "sequential", reasons, None
    ranks = {a.name: len(a.shape) for a in ir.atoms if a.is_leaf}
    chunk_blockers = _chunk_blockers(ir, transitions, ranks)
    has_rank_one = any(t.structure == "identity-minus-rank-one" for t in transitions)
    has_matrix = any(t.rank == 2 for t in transitions)
    if has_matrix and not chunk_blockers:
        proof = prove_chunked(ir, transitions)
        if proof.holds:
            return "chunked", ("matrix state with a transition that has a chunkwise-parallel form",), proof
        chunk_blockers = ["the associativity proof did not go through"]
    if has_rank_one:
        return "sequential", tuple(f"identity minus rank one, but {b}" for b in chunk_blockers), None
    proof = prove_scan(ir, transitions)
    if not proof.holds:
        return "sequential", ("the scan's associativity proof did not go through",), proof
    reasons = ["every transition is elementwise: a parallel scan over (a, b) pairs"]
    reasons += [f"no chunked form: {b}" for b in chunk_blockers if has_matrix]
    return "scan", tuple(reasons), proof


def _chunk_blockers(ir: IR, transitions: list[Transition], ranks) -> list[str]:
    blockers = []
    for t in transitions:
        if t.rank > 2:
            blockers.append(f"state {t.state} has {t.rank} axes (chunked needs a matrix or a vector)")
        elif t.structure == "identity-minus-rank-one":
            if t.decay not in ("identity", "scalar"):
                blockers.append(f"{t.state}'s decay before the rank-one update is {t.decay}")
        elif t.structure not in CHUNKABLE and t.rank == 2:
            blockers.append(f"{t.state}'s transition is {t.structure}, not scalar or diagonal")
        if t.rank == 2 and not outer_like(t.b, ranks):
            blockers.append(f"{t.state}'s input term {show(t.b)} is not a sum of outer products")
    states = {d.name for d in ir.states}
    for out in ir.outputs:
        stray = _non_read_use(nest(ir, out.expr), states)
        if stray:
            blockers.append(f"output {out.name} uses {stray} other than through linear reads (q @ S)")
    return blockers


def _non_read_use(expr: sympy.Expr, states: set[str]) -> str:
    """The states that ``expr`` uses outside ``x @ (affine in states)`` reads, as text."""
    reads = {}
    for node in sympy.preorder_traversal(expr):
        if isinstance(node, Matmul) and _is_linear_read(node, states):
            reads[node] = sympy.Dummy("read")
    rest = expr.xreplace(reads)
    used = sorted(s.name for s in rest.free_symbols if s.name in states)
    return ", ".join(used)


def _is_linear_read(node: Matmul, states: set[str]) -> bool:
    sides = [any(s.name in states for s in arg.free_symbols) for arg in node.args]
    if sides.count(True) != 1:
        return False
    stateful = node.args[sides.index(True)]
    scaled = stateful.xreplace({s: SCALE * s for s in stateful.free_symbols if s.name in states})
    terms = scale_terms(pull_scale(scaled, SCALE), SCALE)
    return terms is not None and max(terms) <= 1
