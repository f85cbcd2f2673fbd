"""Where every tensor of a scan cell sits in a program's tiles, and expressions rewritten over tiles.

A scan program owns a block of the first state axis, all of the other state axes, and
``BLOCK_T`` steps at a time: its tiles have one axis for time and one per state axis,
``[BLOCK_T, BLOCK_D, BLOCK_N]`` for Mamba's ``S: [D, N]``. A tensor that spans fewer axes
(an input ``u: [D]`` read as ``u[:, None]``, a weight that does not vary in time, a scalar
per step) is loaded once in its own *layout* and kept with size-1 axes elsewhere
(``[BLOCK_T, BLOCK_D, 1]``), so that Triton's broadcasting does what the views say.
Every view of a leaf in an expression becomes that one tile; ``E @ V`` (a reduction over
the state's last axis, Mamba's ``S @ C``) becomes a symbol ``m_k`` whose tile is a
``tl.sum`` over that axis.

Names: the state axes are ``ax0``, ``ax1``, ... whatever the dims are called (a layout over
several axes is named after all of them, ``ax0_ax1``), and every variable that carries a
cell's name comes from :mod:`rnnc.templates.names`, so none meets another or the kernels' own.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> tiles = Tiles(analyse_source(open("examples/mamba.rnn").read()))
    >>> [(a.name, str(a.dim)) for a in tiles.axes], tiles.full, tiles.layout_name((1,))
    ([('ax0', 'D'), ('ax1', 'N')], (0, 1), 'ax1')
    >>> tiles.flatten(tiles.plan.transitions[0].a, tiles.full)
    exp(wt_A*x_dt)
    >>> tiles.leaf_axes["dt"], tiles.tile_shape((0,), time=False)
    ((0,), '[1, BLOCK_ax0, 1]')
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy

from rnnc.compiler import Plan
from rnnc.compiler.nested import show, varying_axes
from rnnc.compiler.shapes import same_dim, same_shape
from rnnc.compiler.shapes import show as show_shape
from rnnc.compiler.symbols import STRUCTURAL, Matmul, Placed
from rnnc.errors import BackendError
from rnnc.templates.names import derived


def unsupported(plan: Plan, why: str) -> BackendError:
    """The error for a scan cell the template does not cover, saying why.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> str(unsupported(analyse_source(open("examples/hgrn.rnn").read()), "a reason"))
        'the Triton scan template does not cover cell hgrn yet: a reason'
    """
    return BackendError(f"the Triton scan template does not cover cell {plan.ir.cell} yet: {why}")


@dataclass(frozen=True)
class Axis:
    """One state axis: its dim, and the names the kernels give its size, block, indices and mask.

    Example:
        >>> x = Axis("ax1", sympy.Symbol("N"))
        >>> x.size, x.block, x.index, x.valid
        ('dim_ax1', 'BLOCK_ax1', 'i_ax1', 'ok_ax1')
    """

    name: str
    dim: sympy.Expr

    @property
    def size(self) -> str:
        """The kernel argument holding the axis's length."""
        return f"dim_{self.name}"

    @property
    def block(self) -> str:
        """The constexpr tile size along the axis."""
        return f"BLOCK_{self.name}"

    @property
    def index(self) -> str:
        """The vector of the program's indices along the axis."""
        return f"i_{self.name}"

    @property
    def valid(self) -> str:
        """The mask of those indices that exist (the tile is padded to a power of two)."""
        return f"ok_{self.name}"


@dataclass(frozen=True)
class Reduction:
    """``E @ V`` of an output: ``E`` over the state's axes, ``V`` over its last axis, in tile symbols."""

    symbol: sympy.Symbol  # m_k: the product's tile
    left: sympy.Expr  # E, in the full space
    right: sympy.Expr  # V, in the space of the last axis
    space: tuple[int, ...]  # the state axes of the expression that reads m_k
    label: str  # E @ V as the cell writes it


def _axis_names(shape) -> list[str]:
    """``ax0``, ``ax1``, ...: named by position, an axis's variables cannot meet anything a user named."""
    return [f"ax{i}" for i in range(len(shape))]


class Tiles:
    """The tile space of one scan cell: its state axes, the layout of every leaf, the tile symbols."""

    def __init__(self, plan: Plan):
        ir = plan.ir
        self.plan = plan
        shape = ir.states[0].shape
        if any(not same_shape(d.shape, shape) for d in ir.states):
            shapes = ", ".join(f"{d.name} {show_shape(d.shape)}" for d in ir.states)
            raise unsupported(plan, f"it needs states of one shape, has {shapes}")
        self.axes = [Axis(n, d) for n, d in zip(_axis_names(shape), shape)]
        self.rank = len(shape)
        self.full = tuple(range(self.rank))
        self.leaf_axes: dict[str, tuple[int, ...]] = {}  # leaf name -> the state axes it spans
        self.matmuls: list[Reduction] = []
        self.new_states = {d.name: sympy.Symbol(derived("s", user=d.name), real=True) for d in ir.states}
        # the new value of a state in nested expressions (a name no leaf can have), read as its tile
        self.markers = {d.name: sympy.Symbol(f"{d.name}'", real=True) for d in ir.states}
        # a dim read as a number: a COMPUTE tile (value_ax0), so that sqrt(D) is exact in fp64
        self.dims = {str(a.dim): a for a in self.axes if isinstance(a.dim, sympy.Symbol)}
        self.dims_read: set[str] = set()  # names of the axes whose dims the expressions read

    # --- names and shapes of layouts ------------------------------------------------------------
    def layout_name(self, axes: tuple[int, ...]) -> str:
        """``ax0_ax1`` for a tensor over both axes of a ``[D, N]`` state, ``scalar`` for one over none.

        Example:
            >>> _mamba().layout_name((0, 1)), _mamba().layout_name(())
            ('ax0_ax1', 'scalar')
        """
        return "_".join(self.axes[a].name for a in axes) or "scalar"

    def tile_shape(self, axes: tuple[int, ...], time: bool = True) -> str:
        """The tile shape of a layout, as Triton source: size 1 along the axes it does not span.

        Example:
            >>> _mamba().tile_shape((1,)), _mamba().tile_shape((0, 1), time=False)
            ('[BLOCK_T, 1, BLOCK_ax1]', '[1, BLOCK_ax0, BLOCK_ax1]')
        """
        blocks = [self.axes[a].block if a in axes else "1" for a in self.full]
        return "[" + ", ".join(["BLOCK_T" if time else "1", *blocks]) + "]"

    def spread(self, position: int) -> str:
        """The indexing that puts a vector at tile axis ``position`` (0 is time).

        Example:
            >>> _mamba().spread(0), _mamba().spread(2)
            ('[:, None, None]', '[None, None, :]')
        """
        slots = ["None"] * (self.rank + 1)
        slots[position] = ":"
        return "[" + ", ".join(slots) + "]"

    def offsets(self, axes: tuple[int, ...]) -> str:
        """Offsets of a layout's entries inside one block of its own shape (row-major).

        Example:
            >>> _mamba().offsets((0, 1))
            'i_ax0[None, :, None] * dim_ax1 + i_ax1[None, None, :]'
        """
        if not axes:
            return f"tl.zeros({self.tile_shape((), time=False)}, dtype=tl.int32)"
        terms = []
        for i, a in enumerate(axes):
            strides = [self.axes[b].size for b in axes[i + 1 :]]
            terms.append(" * ".join([f"{self.axes[a].index}{self.spread(a + 1)}", *strides]))
        return " + ".join(terms)

    def valid(self, axes: tuple[int, ...]) -> str:
        """The mask of a layout's entries inside the shape (padding off).

        Example:
            >>> _mamba().valid((1,))
            'ok_ax1[None, None, :]'
        """
        if not axes:
            return f"{self.layout('offs', ())} == 0"
        return " & ".join(f"{self.axes[a].valid}{self.spread(a + 1)}" for a in axes)

    def size(self, axes: tuple[int, ...]) -> str:
        """The number of entries of a layout.

        Example:
            >>> _mamba().size((0, 1)), _mamba().size(())
            ('dim_ax0 * dim_ax1', '1')
        """
        return " * ".join(self.axes[a].size for a in axes) or "1"

    def layout(self, what: str, axes: tuple[int, ...]) -> str:
        """The kernel variable ``what`` (offs, valid, size, mask, zero) of a layout.

        Example:
            >>> _mamba().layout("mask", (0, 1))
            'mask_ax0_ax1'
        """
        return f"{what}_{self.layout_name(axes)}"

    # --- expressions over tiles -----------------------------------------------------------------
    def tile_symbol(self, name: str, next_step: bool = False) -> sympy.Symbol:
        """The tile of leaf ``name``: ``x_u`` for an input (``nx_u`` at the next step), ``wt_A`` for a weight.

        Example:
            >>> _mamba().tile_symbol("dt", next_step=True), _mamba().tile_symbol("A")
            (nx_dt, wt_A)
        """
        kind = self.plan.ir.atom(name).op
        role = {"input": "nx" if next_step else "x", "weight": "wt"}[kind]
        return sympy.Symbol(derived(role, user=name), real=True)

    def flatten(self, expr: sympy.Expr, space: tuple[int, ...], products: bool = True) -> sympy.Expr:
        """``expr`` (nested form, index space over the state axes ``space``) in tile symbols.

        ``products``: whether ``E @ V`` may appear (in outputs, not in state updates).

        Example:
            >>> tiles = _mamba()
            >>> tiles.flatten(tiles.plan.transitions[0].b, tiles.full)
            x_B*x_dt*x_u
        """
        if isinstance(expr, Placed):
            inner = expr.args[0]
            if not isinstance(inner, sympy.Symbol):
                raise unsupported(self.plan, f"it places {show(inner)} into other axes (only leaves so far)")
            return self._leaf(inner.name, tuple(int(a) for a in expr.args[1]), space)
        if isinstance(expr, sympy.Symbol):
            if expr.name.endswith("'") and expr.name[:-1] in self.markers:
                if space != self.full:
                    raise unsupported(self.plan, f"it reads state {expr.name[:-1]} in fewer axes than it has")
                return self.new_states[expr.name[:-1]]
            if expr.name in self.dims:
                self.dims_read.add(self.dims[expr.name].name)
                return sympy.Symbol(f"value_{self.dims[expr.name].name}", positive=True)
            if expr.name in self.plan.ir.dims:
                raise unsupported(self.plan, f"it reads dim {expr.name} as a number, which is no state axis")
            rank = len(self.plan.ir.atom(expr.name).shape)
            return self._leaf(expr.name, tuple(range(-rank, 0)), space)
        if isinstance(expr, Matmul) and products:
            return self._matmul(expr, space)
        if isinstance(expr, STRUCTURAL):
            raise unsupported(self.plan, f"it uses {show(expr)} (only pointwise updates and E @ V outputs so far)")
        if not expr.args:
            return expr
        return expr.func(*[self.flatten(a, space, products) for a in expr.args])

    def _leaf(self, name: str, axes: tuple[int, ...], space: tuple[int, ...]) -> sympy.Expr:
        atom = self.plan.ir.atom(name)
        if atom.op == "state":
            raise unsupported(self.plan, f"an output reads the previous value of state {name}")
        if len(axes) > len(space):
            raise unsupported(self.plan, f"{name} needs {len(axes)} axes, the expression reading it has {len(space)}")
        placed = tuple(space[len(space) + a] for a in axes)
        for i, a in enumerate(placed):
            if not same_dim(atom.shape[i], self.axes[a].dim):
                raise unsupported(
                    self.plan,
                    f"{name} {show_shape(atom.shape)} needs its axis {i} to lie along a state axis, "
                    f"lies along {self.axes[a].dim}",
                )
        if list(placed) != sorted(placed):
            raise unsupported(self.plan, f"it reads {name} with its axes permuted")
        if self.leaf_axes.setdefault(name, placed) != placed:
            raise unsupported(self.plan, f"it reads {name} along two different sets of state axes")
        return self.tile_symbol(name)

    def _matmul(self, expr: sympy.Expr, space: tuple[int, ...]) -> sympy.Expr:
        ranks = {d.name: len(d.shape) for d in self.plan.ir.decls}
        ranks.update({s.name: self.rank for s in self.markers.values()})
        left, right = expr.args
        rank_left, rank_right = varying_axes(left, ranks)[0], varying_axes(right, ranks)[0]
        result = self.full[self.rank - rank_left : -1]
        if rank_right != 1 or not 1 <= rank_left <= self.rank or tuple(space[len(space) - len(result) :]) != result:
            raise unsupported(
                self.plan,
                f"{show(expr)} needs to contract the state's last axis with a vector "
                f"(ranks {rank_left} @ {rank_right} here)",
            )
        pair = (self.flatten(left, self.full), self.flatten(right, self.full[-1:]))
        for m in self.matmuls:
            if (m.left, m.right, m.space) == (*pair, space):
                return m.symbol
        symbol = sympy.Symbol(f"m_{len(self.matmuls)}", real=True)
        self.matmuls.append(Reduction(symbol, *pair, space, show(expr)))
        return symbol

    def output_space(self, name: str, shape) -> tuple[int, ...]:
        """The state axes an output spans: all of them, or all but the last (``S @ C`` outputs).

        Example:
            >>> from rnnc.compiler.shapes import dim_symbol
            >>> _mamba().output_space("y", (dim_symbol("D"),))
            (0,)
        """
        state_shape = tuple(a.dim for a in self.axes)
        for space in (self.full, self.full[:-1]):
            if same_shape(shape, state_shape[: len(space)]):
                return space
        raise unsupported(
            self.plan,
            f"output {name} is {show_shape(shape)}; the scan template needs {show_shape(state_shape)} "
            f"or {show_shape(state_shape[:-1])}",
        )


def _mamba() -> Tiles:
    """Mamba's tiles, fresh each call (for the examples)."""
    return Tiles(_mamba_plan())


@lru_cache(maxsize=1)
def _mamba_plan() -> Plan:
    from rnnc.compiler import analyse_source

    return analyse_source(open("examples/mamba.rnn").read())
