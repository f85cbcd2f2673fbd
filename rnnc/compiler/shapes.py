"""Symbolic shapes: tuples of sympy expressions in the cell's dims.

Example:
    >>> H = sympy.Symbol("H", positive=True, integer=True)
    >>> show((4, H))
    '[4, H]'
    >>> broadcast_shapes((H,), (4, H))
    (4, H)
"""

from __future__ import annotations

import sympy

Shape = tuple[sympy.Expr, ...]


def dim_symbol(name: str) -> sympy.Symbol:
    """The sympy symbol of a dim: a positive integer.

    Example:
        >>> dim_symbol("H").is_positive
        True
    """
    return sympy.Symbol(name, positive=True, integer=True)


def show(shape: Shape) -> str:
    """A shape as the language writes it.

    Example:
        >>> show(())
        '[]'
    """
    return "[" + ", ".join(str(d) for d in shape) + "]"


def same_dim(a: sympy.Expr, b: sympy.Expr) -> bool:
    """Whether two dims are equal for every binding of the cell's dims.

    Example:
        >>> H = dim_symbol("H")
        >>> same_dim(2 * H, H + H), same_dim(H, 1)
        (True, False)
    """
    return sympy.expand(a - b) == 0


def same_shape(a: Shape, b: Shape) -> bool:
    """Whether two shapes are equal.

    Example:
        >>> same_shape((dim_symbol("H"),), (dim_symbol("H"),))
        True
    """
    return len(a) == len(b) and all(same_dim(x, y) for x, y in zip(a, b))


def broadcast_shapes(*shapes: Shape) -> Shape | None:
    """NumPy broadcasting of symbolic shapes; ``None`` when they clash.

    Example:
        >>> K, V = dim_symbol("K"), dim_symbol("V")
        >>> broadcast_shapes((K, 1), (K, V))
        (K, V)
        >>> broadcast_shapes((K,), (V,)) is None
        True
    """
    rank = max((len(s) for s in shapes), default=0)
    out: list[sympy.Expr] = []
    for axis in range(-rank, 0):
        dim = sympy.Integer(1)
        for shape in shapes:
            if -axis > len(shape):
                continue
            d = shape[axis]
            if same_dim(d, 1):
                continue
            if same_dim(dim, 1):
                dim = d
            elif not same_dim(dim, d):
                return None
        out.append(dim)
    return tuple(out)


def divides(count: int, dim: sympy.Expr) -> sympy.Expr | None:
    """``dim / count`` when it is a whole dim for every binding, else ``None``.

    Example:
        >>> H = dim_symbol("H")
        >>> divides(2, 4 * H), divides(2, H)
        (2*H, None)
    """
    quotient = sympy.cancel(sympy.sympify(dim) / count)
    numer, denom = sympy.fraction(quotient)
    if denom != 1:
        return None
    poly = sympy.Poly(numer, *sorted(numer.free_symbols, key=str)) if numer.free_symbols else None
    if poly is not None and not all(c.is_integer for c in poly.coeffs()):
        return None
    if poly is None and not numer.is_integer:
        return None
    return quotient


def matmul_shape(a: Shape, b: Shape) -> tuple[Shape | None, str]:
    """The result shape of ``a @ b`` (NumPy rules) or ``None`` and the reason.

    Example:
        >>> H = dim_symbol("H")
        >>> matmul_shape((4, H, H), (H,))[0]
        (4, H)
    """
    if not a or not b:
        return None, "'@' needs at least a vector on each side (use '*' for scalars)"
    k_a = a[-1]
    k_b = b[-2] if len(b) >= 2 else b[-1]
    if not same_dim(k_a, k_b):
        return None, f"'@' contracts {k_a} (last axis of {show(a)}) with {k_b} (of {show(b)})"
    batch = broadcast_shapes(a[:-2], b[:-2])
    if batch is None:
        return None, f"'@' cannot broadcast the leading axes of {show(a)} and {show(b)}"
    out = list(batch)
    if len(a) >= 2:
        out.append(a[-2])
    if len(b) >= 2:
        out.append(b[-1])
    return tuple(out), ""
