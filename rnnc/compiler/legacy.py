"""The per-state :class:`~rnnc.compiler.affine.Transition` view, derived from the components.

The first templates and the tiling models read one ``Transition`` per state (its ``a``, ``b``,
structure of ``A``); they move to the components one by one, and until then this is their view.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> [t.structure for t in analyse_source(open("examples/gated_deltanet.rnn").read()).transitions]
    ['identity-minus-rank-one']
"""

from __future__ import annotations

import sympy

from rnnc.compiler.affine import Transition
from rnnc.compiler.components import Component
from rnnc.compiler.decompose import decompose
from rnnc.compiler.ir import IR
from rnnc.compiler.linear import LinearForm, decay_structure, leaf_ranks


def legacy_transitions(ir: IR, components: list[Component], forms: dict[str, LinearForm]) -> list[Transition]:
    """One Transition per state, in declaration order.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> from rnnc.compiler.classify import classify
        >>> ir = lower_source(open("examples/hgrn.rnn").read())
        >>> legacy_transitions(ir, *classify(ir))[0].describe()
        "h' = a * h + b with a = exp(g), b = x; A is elementwise"
    """
    updates = {s: u for g in decompose(ir) for s, u in g.updates.items()}
    ranks = leaf_ranks(ir)
    owner = {s: c for c in components for s in c.states}
    out = []
    for decl in ir.states:
        s, rank, c = decl.name, len(decl.shape), owner[decl.name]
        update = updates[s]
        if len(c.states) > 1:
            if c.kind == "nonlinear":
                out.append(Transition(s, rank, update, False, reason=c.evidence[0]))
            else:
                out.append(Transition(s, rank, update, True, "coupled", reason=c.evidence[0]))
            continue
        form = forms[s]
        if c.kind == "maxplus":
            out.append(Transition(s, rank, update, False, reason=c.evidence[0]))
        elif not form.affine:
            out.append(Transition(s, rank, update, False, nonlinear_term=form.blocking, reason=form.reason))
        elif form.structure == "dense":
            out.append(Transition(s, rank, update, True, "dense", b=form.b, reason=form.reason))
        elif form.structure == "rank-one":
            out.append(_rank_one(s, rank, update, form, ranks))
        else:
            out.append(Transition(s, rank, update, True, form.structure, form.axis, a=form.a, b=form.b))
    return out


def _rank_one(state: str, rank: int, update: sympy.Expr, form: LinearForm, ranks) -> Transition:
    """``a (I - beta u w^T)`` when there is one factor with one correction; else dense."""
    if len(form.steps) != 1 or len(form.steps[0].corrections) != 1:
        return Transition(state, rank, update, True, "dense", b=form.b, reason="a product of rank-one factors")
    step = form.steps[0]
    scale, u, w, _ = step.corrections[0]
    decay = decay_structure(step.a, rank, ranks)[0]
    beta = sympy.simplify(-scale / step.a)
    return Transition(
        state, rank, update, True, "identity-minus-rank-one", a=step.a, b=form.b, beta=beta, u=u, w=w, decay=decay
    )
