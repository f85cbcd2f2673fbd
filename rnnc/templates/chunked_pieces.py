"""Recognising what the chunked template needs in a Plan: the pieces of a matrix-state update.

The template covers ``S' = A S + c * outer(k, v)``, ``o = q @ S'`` for one state ``S: [K, V]``
with ``A`` the identity, ``exp(g) I`` (g a scalar), ``diag(exp(g))`` along the key axis, or the
delta rule ``A = a (I - beta k k^T)`` with ``a`` the identity or a scalar ``exp(g)``. Each piece
(``query``, ``key``, ``value``, ``scale`` c, ``beta``, ``log_decay``) is a pointwise expression
of the inputs and weights in one *space*: ``key`` ([K] per step), ``value`` ([V]) or ``scalar``.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> pieces = find_pieces(analyse_source(open("examples/gated_deltanet.rnn").read()))
    >>> pieces.decay, pieces.delta, sorted(pieces.exprs)
    ('scalar', True, ['beta', 'key', 'log_decay', 'query', 'scale', 'value'])
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.nested import nest, show
from rnnc.compiler.shapes import show as show_shape
from rnnc.compiler.symbols import STRUCTURAL, Matmul, Outer, Placed, logsigmoid, sigmoid, tensor_symbol
from rnnc.errors import BackendError
from rnnc.templates.names import internal

SPACES = ("key", "value", "scalar")


@dataclass(frozen=True)
class Pieces:
    """The pieces of a chunked cell: expressions per piece with their space, and the leaves' spaces."""

    key_dim: str
    value_dim: str
    inputs: dict[str, str]
    weights: dict[str, str]
    exprs: dict[str, tuple[sympy.Expr, str]]
    decay: str
    delta: bool


def _unsupported(plan: Plan, why: str) -> BackendError:
    return BackendError(
        f"the Triton chunked template does not cover cell {plan.ir.cell} yet: {why}; backend='reference' runs it"
    )


def find_pieces(plan: Plan) -> Pieces:
    """The :class:`Pieces` of a chunked cell, or a BackendError saying what the template lacks.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> pieces = find_pieces(analyse_source(open("examples/retnet.rnn").read()))
        >>> pieces.exprs["log_decay"], pieces.weights
        ((log_gamma, 'scalar'), {'log_gamma': 'scalar'})
    """
    ir = plan.ir
    if plan.strategy != "chunked":
        raise _unsupported(plan, f"needs the chunked strategy, has {plan.strategy}")
    if len(ir.states) != 1 or len(ir.states[0].shape) != 2:
        shapes = ", ".join(f"{d.name} {show_shape(d.shape)}" for d in ir.states)
        raise _unsupported(plan, f"needs one matrix state, has {shapes}")
    key_dim, value_dim = ir.states[0].shape
    if not (key_dim.is_Symbol and value_dim.is_Symbol) or key_dim == value_dim:
        raise _unsupported(plan, f"needs a state [K, V] of two distinct dims, has {show_shape(ir.states[0].shape)}")
    if len(ir.outputs) != 1:
        raise _unsupported(plan, f"needs one output, has {len(ir.outputs)}")
    spaces = {(): "scalar", (key_dim,): "key", (value_dim,): "value"}
    leaf_space = {}
    for decl in (*ir.inputs, *ir.weights):
        space = spaces.get(tuple(decl.shape))
        if space is None:
            raise _unsupported(
                plan,
                f"needs inputs and weights of shape [], [{key_dim}] or [{value_dim}], "
                f"has {decl.name} {show_shape(decl.shape)}",
            )
        leaf_space[decl.name] = space

    transition = plan.transitions[0]
    exprs: dict[str, tuple[sympy.Expr, str]] = {}
    decay = _decay(plan, transition, exprs)
    delta = transition.structure == "identity-minus-rank-one"

    factors = sympy.Mul.make_args(transition.b)
    outers = [f for f in factors if isinstance(f, Outer)]
    if len(outers) != 1:
        raise _unsupported(plan, f"needs the input term c * outer(k, v), has {show(transition.b)}")
    scale = sympy.Mul(*(f for f in factors if not isinstance(f, Outer)))
    key, value = outers[0].args
    exprs.update({"key": (key, "key"), "value": (value, "value")})
    if scale != 1:
        exprs["scale"] = (scale, "scalar")
    if delta:
        if transition.u != key or transition.w != key:
            raise _unsupported(
                plan,
                f"needs the delta rule to erase along the key it writes ({show(key)}), "
                f"has outer({show(transition.u)}, {show(transition.w)} @ S)",
            )
        exprs["beta"] = (transition.beta, "scalar")

    new_state = sympy.Symbol(internal("new_state"))  # a name no user tensor has
    out = ir.outputs[0]
    read = nest(ir, out.expr).xreplace({transition.update: new_state})
    if tensor_symbol(ir.states[0].name) in read.free_symbols:
        raise _unsupported(plan, f"needs the output to read the updated state, has {show(read)} of the previous one")
    if not (isinstance(read, Matmul) and read.args[1] == new_state and new_state not in read.args[0].free_symbols):
        raise _unsupported(plan, f"needs the output q @ {ir.states[0].name} of the new state, has {show(read)}")
    exprs["query"] = (read.args[0], "key")

    dims = {str(key_dim): "key", str(value_dim): "value"}
    for piece, (expr, space) in exprs.items():
        _check_piece(plan, piece, expr, space, leaf_space, dims)
    inputs = {d.name: leaf_space[d.name] for d in ir.inputs}
    weights = {d.name: leaf_space[d.name] for d in ir.weights}
    return Pieces(str(key_dim), str(value_dim), inputs, weights, exprs, decay, delta)


def _decay(plan: Plan, transition, exprs: dict) -> str:
    """The decay's kind; its log (the ``log_decay`` piece) goes into ``exprs``."""
    structure = transition.structure
    if structure == "identity-minus-rank-one":
        structure = {"identity": "identity", "scalar": "scalar"}.get(transition.decay, "")
        if not structure:
            raise _unsupported(plan, f"needs the delta rule's decay to be scalar, has {transition.decay}")
    if structure == "identity":
        return "none"
    if structure not in ("scalar", "diagonal") or (structure == "diagonal" and transition.axis != -2):
        where = f" along axis {transition.axis}" if transition.axis is not None else ""
        raise _unsupported(plan, f"needs an identity, scalar or key-diagonal decay, has {structure}{where}")
    a = transition.a
    if isinstance(a, sympy.exp):
        log_decay = a.args[0]
    elif isinstance(a, sigmoid):
        log_decay = logsigmoid(a.args[0])
    elif a.is_number and a.is_positive:
        log_decay = sympy.log(a)
    else:
        raise _unsupported(plan, f"needs the decay written as exp(log decay) or sigmoid(x), has {show(a)}")
    if structure == "diagonal":  # g[:, None] in the state's index space is g per key channel
        log_decay = log_decay.replace(
            lambda e: isinstance(e, Placed) and tuple(e.args[1]) == (-2,), lambda e: e.args[0]
        )
    exprs["log_decay"] = (log_decay, "key" if structure == "diagonal" else "scalar")
    return structure


def _check_piece(plan, piece, expr, space, leaf_space, dims) -> None:
    """A piece is pointwise in leaves of its own space or scalars."""
    structural = [e for e in sympy.preorder_traversal(expr) if isinstance(e, STRUCTURAL)]
    if structural:
        raise _unsupported(plan, f"needs the {piece} to be pointwise, has {show(structural[0])}")
    for symbol in sorted(expr.free_symbols, key=lambda s: s.name):
        found = leaf_space.get(symbol.name) or dims.get(symbol.name)
        if symbol.name in dims:
            continue
        if found is None:
            raise _unsupported(plan, f"needs the {piece} to read inputs, weights and K, V, has {symbol}")
        if found not in ("scalar", space):
            raise _unsupported(
                plan, f"needs the {piece} ({space} per step) to read {space} or scalar tensors, has {symbol.name}"
            )
