"""State-free reductions of a scan stage, computed before the kernel instead of inside it.

A reduction that reads no state (LRU's ``B_re @ u``, Aaren's ``q @ k``, Longhorn's
``sum(k * k)``) has the same value whatever the scan does, so the launcher computes it for
every step at once with PyTorch (``B_re @ u`` becomes one GEMM over all steps, on tensor cores)
and the kernel reads it as one more input (``pre_0``); in backward, the kernel's cotangent of
``pre_0`` goes back through the same PyTorch expression. Inside the kernel such a reduction
would need a tile axis of its own (H, K) beside the state's, and Triton lays out tensors that
span different axes of one tile space badly: on sm_90 Aaren's backward spilled 5.8 KB a
thread, and LRU at H = N = 64 took longer than 15 minutes to compile. A reduction that reads
only weights becomes a weight; one that reads a state stays in the kernel (Mamba's ``S' @ C``).

Example:
    >>> from rnnc.compiler import analyse_source
    >>> plan = analyse_source(open("examples/aaren.rnn").read())
    >>> hoister = Hoister(plan.ir)
    >>> hoister.rewrite(plan.components[0].maxplus.b), hoister.hoisted[0].kind, hoister.hoisted[0].shape
    (pre_0, 'input', ())
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.ir import IR, Declared
from rnnc.compiler.nested import show
from rnnc.compiler.shapes import Shape, broadcast_shapes, matmul_shape
from rnnc.compiler.symbols import REDUCTIONS, Matmul, Outer, Part, Placed, tensor_symbol


@dataclass(frozen=True)
class Hoisted:
    """A state-free reduction computed before the kernel: its name, kind, nested expression and shape."""

    name: str
    kind: str  # "input" (it reads an input: one value per step) or "weight"
    expr: sympy.Expr
    shape: Shape

    def declared(self) -> Declared:
        """The declaration the kernel sees it as."""
        return Declared(self.kind, self.name, self.shape)


class Hoister:
    """Replaces each maximal state-free reduction of the expressions it rewrites by a new leaf."""

    def __init__(self, ir: IR):
        self.ir = ir
        self.decls = {d.name: d for d in ir.decls}
        self.states = {d.name for d in ir.states}
        self.hoisted: list[Hoisted] = []
        self._by_expr: dict[sympy.Expr, sympy.Symbol] = {}
        taken = set(self.decls) | set(ir.dims) | {o.name for o in ir.outputs}
        self._names = (f"pre_{i}" for i in range(10**6) if f"pre_{i}" not in taken)

    def _state_free(self, expr: sympy.Expr) -> bool:
        return not any(s.name.rstrip("'") in self.states for s in expr.free_symbols)

    def rewrite(self, expr: sympy.Expr) -> sympy.Expr:
        """``expr`` with its state-free reductions replaced by the leaves that hold them."""
        expr = sympy.sympify(expr)
        if (isinstance(expr, Matmul) or type(expr) in REDUCTIONS.values()) and self._state_free(expr):
            reads_input = any(self.decls.get(s.name, None) is not None and self.decls[s.name].kind == "input"
                              for s in expr.free_symbols)  # fmt: skip
            if expr not in self._by_expr:
                name = next(self._names)
                kind = "input" if reads_input else "weight"
                self.hoisted.append(Hoisted(name, kind, expr, self.shape(expr)))
                self._by_expr[expr] = tensor_symbol(name)
            return self._by_expr[expr]
        if not expr.args or isinstance(expr, sympy.Symbol):
            return expr
        return expr.func(*[self.rewrite(a) if isinstance(a, sympy.Basic) else a for a in expr.args])

    def shape(self, expr: sympy.Expr) -> Shape:
        """The shape of a nested expression over the cell's tensors (NumPy rules).

        Example:
            >>> from rnnc.compiler import lower_source
            >>> ir = lower_source(open("examples/lru.rnn").read())
            >>> Hoister(ir).shape(Matmul(tensor_symbol("B_re"), tensor_symbol("u")))
            (N,)
        """
        if isinstance(expr, sympy.Symbol):
            decl = self.decls.get(expr.name.rstrip("'"))
            return tuple(decl.shape) if decl is not None else ()
        if expr.is_Number or not expr.args:
            return ()
        if isinstance(expr, Placed):
            inner, axes = self.shape(expr.args[0]), [int(a) for a in expr.args[1]]
            out = [sympy.Integer(1)] * -min(axes)
            for size, axis in zip(inner, axes):
                out[len(out) + axis] = size
            return tuple(out)
        if isinstance(expr, Outer):
            return self.shape(expr.args[0]) + self.shape(expr.args[1])
        if isinstance(expr, Matmul):
            found, why = matmul_shape(self.shape(expr.args[0]), self.shape(expr.args[1]))
            if found is None:  # pragma: no cover - the analysis checked the cell's shapes
                raise AssertionError(f"{show(expr)}: {why}")
            return found
        if type(expr) in REDUCTIONS.values():
            inner, axis = self.shape(expr.args[0]), int(expr.args[1])
            return () if axis < 0 else inner[:axis] + inner[axis + 1 :]
        if isinstance(expr, Part):
            inner = list(self.shape(expr.args[0]))
            axis, _, count, drop = (int(a) for a in expr.args[1:])
            if drop:
                del inner[axis]
            else:
                inner[axis] = inner[axis] / count
            return tuple(inner)
        shapes = [self.shape(a) for a in expr.args if isinstance(a, sympy.Expr)]
        return broadcast_shapes(*shapes) or max(shapes, key=len, default=())
