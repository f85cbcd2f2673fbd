"""Which kernel runs which components: the strategy, the stages, the chunked group and its reads.

* a ``nonlinear`` or ``dense`` component makes the cell ``sequential``: one stage, every state;
* otherwise matrix states whose transition the chunked form covers (rank-one corrections, or a
  decay that is the identity, a scalar or diagonal along the key axis, with outer-product writes)
  form a chunked *group*, joined by vector states read through contractions (``q @ n``); the
  cell is ``chunked`` when every output reads the group's states only through ``query @ S``
  reads along the key axis. The other components run first, as a scan stage whose states' values
  the chunked stage reads per step;
* otherwise every component is a scan component and the cell is a ``scan``.

Example:
    >>> from rnnc.compiler import lower_source
    >>> from rnnc.compiler.classify import classify
    >>> ir = lower_source(open("examples/gla.rnn").read())
    >>> strategy, reasons, components, stages = plan_stages(ir, *classify(ir))
    >>> strategy, [s.strategy for s in stages], stages[-1].output_pieces[0].reads[0].new
    ('chunked', ['chunked'], True)
"""

from __future__ import annotations

import dataclasses

import sympy

from rnnc.compiler.canonical import canonical, in_axis_space, rank_of
from rnnc.compiler.components import Blocker, Component, Factor, LinearState, OutputPiece, RankOne, Read, Stage, Write
from rnnc.compiler.decay import is_positive, log_decay
from rnnc.compiler.decompose import marked_outputs, marked_updates, reads_of
from rnnc.compiler.ir import IR
from rnnc.compiler.linear import LinearForm, leaf_ranks
from rnnc.compiler.nested import show
from rnnc.compiler.shapes import same_dim
from rnnc.compiler.symbols import Matmul, tensor_symbol

SCAN_KINDS = ("elementwise", "coupled", "maxplus")


def plan_stages(ir: IR, components: list[Component], forms: dict[str, LinearForm]):
    """(strategy, reasons, components with their pieces filled in, stages).

    Example:
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.classify import classify
        >>> ir = lower_source(open("examples/hgrn.rnn").read())
        >>> plan_stages(ir, *classify(ir))[0]
        'scan'
    """
    outputs = marked_outputs(ir)
    everything = tuple(c.index for c in components)
    hard = [c for c in components if c.kind in ("nonlinear", "dense")]
    if hard:
        reasons = tuple(line for c in hard for line in c.evidence[:1])
        return "sequential", reasons, components, (_whole(ir, "sequential", everything, outputs),)
    attempt = _chunked(ir, components, forms, outputs)
    if isinstance(attempt, tuple):
        return attempt
    if all(c.kind in SCAN_KINDS for c in components):
        reasons = ["every component is elementwise, coupled per channel or max-plus: a parallel scan"]
        if attempt:
            reasons.append(f"no chunked form: {attempt}")
        return "scan", tuple(reasons), components, (_whole(ir, "scan", everything, outputs),)
    reasons = (f"a linear matrix state has no chunked or scan form here ({attempt}); it runs step by step",)
    return "sequential", reasons, components, (_whole(ir, "sequential", everything, outputs),)


def _whole(ir: IR, strategy: str, indices, outputs) -> Stage:
    return Stage(strategy, indices, tuple(outputs), output_exprs=tuple(outputs.items()))


def _matrix_like(c: Component, forms, shapes) -> bool:
    if c.kind == "matrix":
        return True
    if c.kind != "elementwise" or len(c.states) != 1:
        return False
    form = forms[c.states[0]]
    return len(shapes[c.states[0]]) == 2 and form.structure in ("identity", "scalar", "diagonal") and _writes_ok(form)


def _vector_like(c: Component, forms, shapes) -> bool:
    if c.kind != "elementwise" or len(c.states) != 1 or len(shapes[c.states[0]]) != 1:
        return False
    return forms[c.states[0]].structure in ("identity", "scalar", "elementwise") and _writes_ok(forms[c.states[0]])


def _writes_ok(form: LinearForm) -> bool:
    return all(step.writes is not None for step in form.steps)


def _chunked(ir: IR, components, forms, outputs):
    """The chunked plan as (strategy, reasons, components, stages), or why there is none ("" if no matrix)."""
    shapes = {d.name: d.shape for d in ir.states}
    ranks = leaf_ranks(ir)
    blocks = [c for c in components if c.kind == "coupled-linear"]
    if blocks:  # the chunked form exists (a block system), its kernel does not yet
        blockers = tuple(
            Blocker(
                c.index,
                "transition",
                f"{', '.join(c.states)}: the chunked block form of coupled linear states is not built",
                c.span,
            )
            for c in blocks
        )
        everything = tuple(c.index for c in components)
        stage = Stage("chunked", everything, tuple(outputs), output_exprs=tuple(outputs.items()), blockers=blockers)
        reasons = ("coupled linear matrix states: a chunkwise-parallel block form",)
        return "chunked", reasons, components, (stage,)
    matrices = [c for c in components if _matrix_like(c, forms, shapes)]
    if not matrices:
        return ""
    vectors = [c for c in components if _vector_like(c, forms, shapes)]
    group = [s for c in matrices for s in c.states] + [s for c in vectors for s in c.states]
    while True:
        pieces, axes, stray = _output_pieces(ir, outputs, group, shapes, ranks)
        if stray is None:
            break
        # a vector read other than by contraction (as a query of a matrix state: c' @ S') runs in the scan stage
        movable = [s for s in stray[0] if s in [t for c in vectors for t in c.states]]
        if movable:
            group.remove(movable[0])
            continue
        return stray[1]
    keyed = _key_axes(group, forms, axes, shapes)
    if isinstance(keyed, str):
        return keyed
    key_dims = {s: shapes[s][keyed[s]] for s in group}
    matrix_dims = [key_dims[s] for s in group if len(shapes[s]) == 2]
    group = [s for s in group if len(shapes[s]) == 2 or any(same_dim(key_dims[s], d) for d in matrix_dims)]
    blockers = []
    updates = marked_updates(ir)
    linear = {}
    for c in components:
        if not set(c.states) & set(group):
            continue
        for s in c.states:
            others = reads_of(updates[s], [t for t in group if t != s])
            if others:
                blockers.append(
                    Blocker(
                        c.index,
                        "update",
                        f"{s}'s update reads {', '.join(sorted(others))}, another state of the chunked group",
                        c.span,
                    )
                )
            linear[s] = _linear_state(s, forms[s], keyed[s], shapes[s], ranks)
    first_dim = key_dims[group[0]]
    if any(not same_dim(key_dims[s], first_dim) for s in group):
        dims = ", ".join(f"{s}: {key_dims[s]}" for s in group)
        blockers.append(
            Blocker(0, "key dim", f"the chunked states contract different key dims ({dims})", ir.updates[0].span)
        )
    rest = [c for c in components if not set(c.states) & set(group)]
    for c in rest:
        if c.kind not in SCAN_KINDS:
            return f"{', '.join(c.states)} is {c.kind}, which no scan before the chunked stage runs"
        fed = sorted({t for s in c.states for t in reads_of(updates[s], group)})
        if fed:
            blockers.append(
                Blocker(
                    c.index,
                    "update",
                    f"{', '.join(c.states)} reads the chunked state {', '.join(fed)}: "
                    "a scan after the chunked stage is not built",
                    c.span,
                )
            )
    updated = []
    for c in components:
        if set(c.states) & set(group):
            evidence = c.evidence
            if c.kind != "matrix":
                shape = "vector" if len(shapes[c.states[0]]) == 1 else "matrix"
                evidence = (*c.evidence, f"a linear {shape} state with a chunked form: it joins the chunked group")
            c = dataclasses.replace(c, kind="matrix", evidence=evidence, linear=tuple(linear[s] for s in c.states))
        updated.append(c)
    stages = []
    carried = tuple(s for c in rest for s in c.states)
    if rest:
        stages.append(Stage("scan", tuple(c.index for c in rest), (), carries=carried))
    chunk_indices = tuple(c.index for c in updated if c.kind == "matrix")
    stages.append(Stage("chunked", chunk_indices, tuple(outputs), output_pieces=pieces, blockers=tuple(blockers)))
    reasons = ("linear matrix states with a chunkwise-parallel form; outputs read them through query @ S",)
    return "chunked", reasons, updated, tuple(stages)


def _output_pieces(ir: IR, outputs: dict, group: list[str], shapes, ranks):
    """(pieces, {state: read axes}, None), or (None, None, (the states used otherwise, why))."""
    pieces, axes = [], {s: set() for s in group}
    count = 0
    names = {tensor_symbol(s): (s, False) for s in group} | {tensor_symbol(s + "'"): (s, True) for s in group}
    for name, expr in outputs.items():
        reads, table = [], {}
        expr = canonical(expr, ranks, tuple(group))
        for node in sympy.preorder_traversal(expr):
            if not isinstance(node, Matmul) or node in table:
                continue
            found = _as_read(node, names, shapes)
            if found is None:
                continue
            state, new, query, axis = found
            symbol = sympy.Symbol(f"read_{count}", real=True)
            count += 1
            table[node] = symbol
            reads.append(Read(symbol, state, new, query))
            axes[state].add(axis)
        rest = expr.xreplace(table)
        stray = sorted({names[s][0] for s in rest.free_symbols if s in names})
        if stray:
            why = f"output {name} uses {stray[0]} other than through query @ {stray[0]} reads"
            return None, None, (tuple(stray), why)
        shape = next(o.shape for o in ir.outputs if o.name == name)
        pieces.append(OutputPiece(name, shape, rest, tuple(reads)))
    return tuple(pieces), axes, None


def _as_read(node: Matmul, names: dict, shapes):
    """(state, new, query, key axis) when ``node`` is ``query @ S`` or ``S @ query`` of a group state."""
    left, right = node.args
    if right in names and not left.free_symbols & set(names):
        state, new = names[right]
        return state, new, left, 0
    if left in names and not right.free_symbols & set(names):
        state, new = names[left]
        return state, new, right, len(shapes[state]) - 1
    return None


def _key_axes(group, forms, read_axes, shapes):
    """The key axis of each group state, or why they disagree."""
    keyed = {}
    for s in group:
        form = forms[s]
        rank = len(shapes[s])
        wanted = set(read_axes[s])
        if rank == 2 and form.axis is not None and form.structure in ("diagonal", "rank-one"):
            wanted.add(0 if form.axis == -2 else 1)
        if rank == 1:
            wanted = {0}
        if len(wanted) > 1:
            return f"{s} is contracted along both axes (by its transition or its reads)"
        keyed[s] = next(iter(wanted), 0)
    return keyed


def _linear_state(state: str, form: LinearForm, key_axis: int, shape, ranks) -> LinearState:
    """The chunked pieces of one state, in key-first orientation."""
    rank = len(shape)
    along = -2 if rank == 2 and key_axis == 0 else -1
    factors = []
    for step in form.steps:
        decay, log, positive = _decay(step.a, along, ranks)
        corrections = tuple(RankOne(c, u, w) for c, u, w, _ in step.corrections)
        writes = []
        for scale, left, right in step.writes or ():
            if rank == 1:
                writes.append(Write(scale, left, None))
            elif key_axis == 0:
                writes.append(Write(scale, left, right))
            else:
                writes.append(Write(scale, right, left))
        factors.append(Factor(decay, log, positive, corrections, tuple(writes)))
    value_dim = None if rank == 1 else shape[1 - key_axis]
    return LinearState(state, key_axis, shape[key_axis], value_dim, tuple(factors))


def _decay(a: sympy.Expr, along: int, ranks):
    """(kind, log decay in its space, proved positive) of a factor's decay ``a``."""
    if a == 1:
        return "identity", None, True
    if rank_of(a, ranks) == 0:
        return "scalar", log_decay(a), is_positive(a)
    vector = in_axis_space(a, along, ranks)
    if vector is None:  # pragma: no cover - the stage is only formed for such decays
        raise AssertionError(f"decay {show(a)} is not along axis {along}")
    return "diagonal", log_decay(vector), is_positive(vector)
