"""Rendering the chunked template for a Plan: every cell expression from the sympy printer.

Covered: one matrix state ``S: [K, V]`` whose update is
``S' = a * S + c * outer(k(x), v(x))`` with ``a`` the identity, ``exp(scalar)`` or
``exp(g(x))[:, None]`` (a log decay per key channel), or the delta rule
``S' = a * (S - beta * outer(k, k @ S)) + c * outer(k, v)`` with ``a`` the identity or a
scalar ``exp(...)``, and one output ``q(x) @ S'``. The pieces ``q``, ``k``, ``v``, ``c``,
``beta`` and the log decay are pointwise expressions of the inputs and weights, printed by
:func:`rnnc.templates.triton_printer.to_triton`; backward chains through them with sympy's
derivatives. Anything else raises a BackendError that says why.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> module = render_chunked(analyse_source(open("examples/gla.rnn").read()))
    >>> module.decay, module.forward_args
    ('diagonal', ['in_q', 'in_k', 'in_v', 'in_g', 'st_S', 'out_o', 'fin_S', 'saved_S'])
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler import Plan
from rnnc.templates.chunked_pieces import Pieces, find_pieces
from rnnc.templates.loading import template
from rnnc.templates.names import derived, internal
from rnnc.templates.triton_printer import to_triton

# the structural parts of the template per decay: (state decay, carry of k to the chunk end,
# decay of q, decay of a score pair, beta times the decay, the decay alone)
_DECAY_TEXT = {
    "none": {
        "decay_state": "",
        "k_carry": "",
        "q_decay": "",
        "pair_decay_mul": "",
        "beta_decay": "beta",
        "p_over_beta": "",
        "lane_index": "",
        "last_index": "",
    },
    "scalar": {
        "decay_state": "tl.exp(gamma_last) * ",
        "k_carry": "tl.exp(gamma_last - gamma)[:, None] * ",
        "q_decay": "tl.exp(gamma)[:, None] * ",
        "pair_decay_mul": " * pair_decay",
        "beta_decay": "beta * tl.exp(gamma)",
        "p_over_beta": "tl.exp(gamma)[:, None] * ",
        "lane_index": "",
        "last_index": "",
    },
    "diagonal": {
        "decay_state": "tl.exp(gamma_last)[:, None] * ",
        "k_carry": "tl.exp(gamma_last[None, :] - gamma) * ",
        "q_decay": "",
        "pair_decay_mul": "",
        "beta_decay": "",
        "p_over_beta": "",
        "lane_index": "[:, None]",
        "last_index": "[None, :]",
    },
}

# what a tile of each space is called, how it is masked, and how a pointer to a row is formed
_TILE = {
    "key": ("zero_k", "mask_tk", "row[:, None] * DK + kk[None, :]"),
    "value": ("zero_v", "mask_tv", "row[:, None] * DV + vv[None, :]"),
    "scalar": ("zero_c", "mask_t", "row"),
}
# gradient tiles of the pieces (the template computes them); in sympy expressions they are symbols
# named by names.internal, which no user name equals
_D_PIECE = {
    "query": "d_query",
    "key": "d_key",
    "value": "d_value",
    "scale": "d_scale",
    "beta": "d_beta",
    "log_decay": "d_log_decay",
}
_D_SYMBOL = {piece: internal(tile) for piece, tile in _D_PIECE.items()}


@dataclass(frozen=True)
class ChunkedModule:
    """The generated module text, the order of its kernels' pointer arguments, and its decay."""

    text: str
    forward_args: list
    backward_args: list
    decay: str
    delta: bool


def _names(pieces: Pieces, space: str) -> dict[str, str]:
    """Tile names of the leaves, broadcast into ``space`` ([CHUNK, BK], [CHUNK, BV] or [CHUNK])."""
    zero = _TILE[space][0]  # a dim read as a number: a COMPUTE-typed tile, not an integer
    names = {pieces.key_dim: f"({zero} + DK)", pieces.value_dim: f"({zero} + DV)"}
    for name, leaf_space in pieces.inputs.items():
        widen = "[:, None]" if leaf_space == "scalar" and space != "scalar" else ""
        names[name] = f"{derived('x', user=name)}{widen}"
    for name, leaf_space in pieces.weights.items():
        tile = derived("wt", user=name)
        names[name] = f"{tile}[None, :]" if leaf_space != "scalar" else tile
    names.update({_D_SYMBOL[piece]: tile for piece, tile in _D_PIECE.items()})
    return names


def _print(pieces: Pieces, expr: sympy.Expr, space: str) -> str:
    """``expr`` printed in ``space``; a constant or weight-only expression gets the tile's shape."""
    expr = sympy.sympify(expr)
    text = to_triton(expr, _names(pieces, space))
    tiles = {*pieces.inputs, *_D_SYMBOL.values()}
    if not any(s.name in tiles for s in expr.free_symbols):
        text = f"{_TILE[space][0]} + ({text})"
    return text


def _gradient(pieces: Pieces, leaf: str, space: str) -> str:
    """The gradient of one leaf in its own space: d piece * d piece / d leaf, summed over pieces."""
    symbol = sympy.Symbol(leaf, real=True)
    terms = []
    for piece, (expr, piece_space) in sorted(pieces.exprs.items()):
        derivative = sympy.diff(expr, symbol)
        if derivative == 0:
            continue
        text = _print(pieces, sympy.Symbol(_D_SYMBOL[piece], real=True) * derivative, piece_space)
        if piece_space != space:  # a scalar leaf read by a vector piece: sum over the channels
            text = f"tl.sum(tl.where({_TILE[piece_space][1]}, {text}, 0.0), axis=1)"
        terms.append(text)
    return " + ".join(terms) if terms else _TILE[space][0]


def render_chunked(plan: Plan) -> ChunkedModule:
    """The Triton module (forward and backward kernels) of a chunked cell.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> module = render_chunked(analyse_source(open("examples/deltanet.rnn").read()))
        >>> module.delta, "_unit_lower_inverse(l_matrix, CHUNK)" in module.text
        (True, True)
    """
    pieces = find_pieces(plan)
    ir = plan.ir
    inputs = []
    for decl in ir.inputs:
        space = pieces.inputs[decl.name]
        _, mask, offsets = _TILE[space]
        pointer, grad_pointer = derived("in", user=decl.name), derived("d_in", user=decl.name)
        load = f"tl.load({pointer} + {offsets}, mask={mask}, other=0.0).to(COMPUTE)"
        grad = _gradient(pieces, decl.name, space)
        if space == "value":  # one program owns these columns: a plain store
            store = f"tl.store({grad_pointer} + {offsets}, {grad}, mask={mask})"
        else:  # summed over the programs of the value blocks
            store = f"tl.atomic_add({grad_pointer} + {offsets}, {grad}, mask={mask})"
        inputs.append({"tile": derived("x", user=decl.name), "load": load, "store_grad": store})
    weights = []
    for decl in ir.weights:
        space = pieces.weights[decl.name]
        zero, mask, _ = _TILE[space]
        pointer, grad_pointer, acc = (derived(role, user=decl.name) for role in ("w", "d_w", "g"))
        if space == "scalar":
            load = f"tl.load({pointer} + h).to(COMPUTE)"
            store = f"tl.atomic_add({grad_pointer} + h, tl.sum({acc}, axis=0))"
        else:
            size, lanes, lane_mask = ("DK", "kk", "mask_k") if space == "key" else ("DV", "vv", "mask_v")
            load = f"tl.load({pointer} + h * {size} + {lanes}, mask={lane_mask}, other=0.0).to(COMPUTE)"
            store = f"tl.atomic_add({grad_pointer} + h * {size} + {lanes}, tl.sum({acc}, axis=0), mask={lane_mask})"
        weights.append(
            {
                "tile": derived("wt", user=decl.name),
                "load": load,
                "grad": acc,
                "grad_zero": zero,
                "grad_expr": f"tl.where({mask}, {_gradient(pieces, decl.name, space)}, 0.0)",
                "store_grad": store,
            }
        )
    state, output = ir.states[0].name, ir.outputs[0].name
    printed = {name: _print(pieces, expr, space) for name, (expr, space) in pieces.exprs.items()}
    of_state = {role: derived(role, user=state) for role in ("s", "st", "fin", "saved", "d_fin", "d_st")}
    of_output = {role: derived(role, user=output) for role in ("out", "d_out")}
    leaves = [derived("in", user=d.name) for d in ir.inputs] + [derived("w", user=d.name) for d in ir.weights]
    leaf_grads = [derived("d_in", user=d.name) for d in ir.inputs] + [derived("d_w", user=d.name) for d in ir.weights]
    forward_args = leaves + [of_state["st"], of_output["out"], of_state["fin"], of_state["saved"]]
    backward_args = leaves + [of_state["saved"], of_output["d_out"], of_state["d_fin"], *leaf_grads, of_state["d_st"]]
    text = template("chunked.py.jinja").render(
        cell=ir.cell,
        key=plan.key(),
        forward_args=forward_args,
        backward_args=backward_args,
        inputs=inputs,
        weights=weights,
        decay=pieces.decay,
        delta=pieces.delta,
        has_scale="scale" in printed,
        **{f"{name}_expr": printed.get(name, "") for name in _D_PIECE},
        state_tile=of_state["s"],
        initial=of_state["st"],
        final=of_state["fin"],
        saved=of_state["saved"],
        output=of_output["out"],
        d_output=of_output["d_out"],
        d_final=of_state["d_fin"],
        d_initial=of_state["d_st"],
        **_DECAY_TEXT[pieces.decay],
    )
    return ChunkedModule(text, forward_args, backward_args, pieces.decay, pieces.delta)
