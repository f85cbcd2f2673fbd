"""The chunked kernels' lines for the step values: leaf tiles, the pieces, and the pieces' cotangents.

Names in the generated source are collision-free by construction (``rnnc.templates.names``):
every identifier that carries a user's name is derived from it (``key_in_q`` is input ``q``'s tile
in the key space, ``ptr_wt_log__gamma`` weight ``log_gamma``'s pointer, ``ptr_new_m`` the new values
of an earlier state ``m``, ``dim_K`` dim ``K``); the template's own variables are numbered per state,
read or output (``s0_lam0``, ``qr1``, ``out0``) and have no role a derived identifier uses.

Spaces: a tile of the scalar space is ``[STEPS]``, of the key space ``[STEPS, BK]`` (lanes ``kk``),
of the value space ``[STEPS, BV]`` (lanes ``vv``, this program's block of the value dim).

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.chunked_spec import stage_spec
    >>> lines = StepLines(stage_spec(analyse_source(open("examples/gla.rnn").read())))
    >>> lines.leaf_loads()[-1].split(", mask")[0]
    'key_in_g = tl.load(ptr_in_g + first * dim_K + (rows[:, None] * dim_K + kk[None, :])'
"""

from __future__ import annotations

import sympy

from rnnc.templates.chunked_spec import ChunkedSpec
from rnnc.templates.names import derived, internal
from rnnc.templates.triton_printer import to_triton

TAG = {"scalar": "sc", "key": "key", "value": "val"}
MASK = {"scalar": "mask_t", "key": "mask_tk", "value": "mask_tv"}
ZERO = {"scalar": "zero_sc", "key": "zero_key", "value": "zero_val"}
LANES = {"key": ("kk", "mask_k"), "value": ("vv", "mask_v")}
ACCUMULATOR = {
    "scalar": "tl.zeros([1], dtype=COMPUTE)",
    "key": "tl.zeros([BK], dtype=COMPUTE)",
    "value": "tl.zeros([BV], dtype=COMPUTE)",
}


def step_offsets(size: str, lanes: str) -> str:
    """Offsets of a chunk's ``[STEPS, lanes]`` tile in a ``[B, T, NH, size]`` tensor: the chunk's first row
    (int64) times ``size`` plus small int32 offsets inside the chunk (addresses need few registers).

    Example:
        >>> step_offsets("d0_K", "kk")
        'first * d0_K + (rows[:, None] * d0_K + kk[None, :])'
    """
    return f"first * {size} + (rows[:, None] * {size} + {lanes}[None, :])"


KIND = {"input": "in", "weight": "wt"}  # the role word of a leaf (earlier states: old, new)


def leaf_role(leaf) -> tuple[str, str]:
    """(role word, user name) of a leaf: ``in``/``wt`` and its name, or ``old``/``new`` and its state's name.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> leaf_role(NS(role="earlier", state="m", new=True, name="m'"))
        ('new', 'm')
    """
    if leaf.role == "earlier":
        return ("new" if leaf.new else "old"), leaf.state
    return KIND[leaf.role], leaf.name


class StepLines:
    """Names and lines of the step values of one chunked spec."""

    def __init__(self, spec: ChunkedSpec):
        self.spec = spec
        self.roles = {x.name: leaf_role(x) for x in spec.leaves if x.role != "dim"}
        self.dim = {x.name: derived("dim", user=x.name) for x in spec.leaves if x.role == "dim"}
        self.read = {r.symbol: f"y{k}" for k, r in enumerate(spec.reads)}
        self.reduction = {r.symbol.name: f"red{j}" for j, r in enumerate(spec.reductions)}
        self.pieces = self._pieces()
        self.spaces = self._leaf_spaces()

    # --- names -----------------------------------------------------------------------------
    def ptr(self, name: str, grad: bool = False) -> str:
        """The pointer argument of a leaf (or of its cotangent)."""
        kind, user = self.roles[name]
        return derived(*(("grad",) if grad else ()), "ptr", kind, user=user)

    def tile(self, name: str, space: str, grad: bool = False) -> str:
        """A leaf's tile in ``space`` (or the tile of its cotangent there)."""
        kind, user = self.roles[name]
        return derived(*(("g",) if grad else ()), TAG[space], kind, user=user)

    def dim_text(self, expr) -> str:
        """An integer expression of the dims (``K``, ``2 * H``) as source over the dim arguments."""
        expr = sympy.sympify(expr)
        return to_triton(expr, self.dim).replace(".0", "") if not expr.is_Symbol else self.dim[expr.name]

    def is_scalar(self, name: str) -> bool:
        """Whether a leaf is a scalar per step (shape [])."""
        return len(self.spec.leaf(name).shape) == 0

    def names(self, space: str, extra: dict | None = None) -> dict[str, str]:
        """How each symbol is spelled in a tile of ``space``."""
        widen = "" if space == "scalar" else "[:, None]"
        names = {}
        for leaf in self.spec.leaves:
            if leaf.role == "dim":
                names[leaf.name] = f"({ZERO[space]} + {self.dim[leaf.name]})"
            elif not leaf.shape:
                names[leaf.name] = self.tile(leaf.name, "scalar") + (widen if leaf.role != "weight" else "")
            elif leaf.role == "weight":
                names[leaf.name] = f"{self.tile(leaf.name, space)}[None, :]"
            else:
                names[leaf.name] = self.tile(leaf.name, space)
        names.update({k: v + widen for k, v in self.reduction.items()})
        for r in self.spec.reads:
            vector = self.spec.state(r.state).vector
            names[r.symbol] = self.read[r.symbol] + (widen if vector else "")
        names.update(extra or {})
        return names

    def per_step(self, expr, extra=()) -> bool:
        """Whether ``expr`` reads a per-step tile (else it is printed over a zero tile for its shape)."""
        tiles = {x.name for x in self.spec.leaves if x.role in ("input", "earlier")}
        tiles |= set(self.reduction) | set(self.read) | set(extra)
        return any(s.name in tiles for s in sympy.sympify(expr).free_symbols)

    def print(self, expr, space: str, extra: dict | None = None) -> str:
        """``expr`` as a tile of ``space``."""
        expr = sympy.sympify(expr)
        text = to_triton(expr, self.names(space, extra))
        if not self.per_step(expr, extra or {}):
            text = f"{ZERO[space]} + ({text})"
        return text

    # --- pieces ----------------------------------------------------------------------------
    def _pieces(self) -> list[tuple[str, sympy.Expr, str]]:
        """(variable, expression, space) of every piece the kernels compute per step, in order."""
        out = []
        for j, s in enumerate(self.spec.states):
            for f, step in enumerate(s.steps):
                if step.log_decay is not None:
                    out.append((f"s{j}_lam{f}", step.log_decay, "key" if step.decay == "diagonal" else "scalar"))
                if step.correction is not None:
                    c, u, w = step.correction
                    out += [(f"s{j}_c{f}", c, "scalar"), (f"s{j}_u{f}", u, "key"), (f"s{j}_w{f}", w, "key")]
            for w, (_, scale, key, value) in enumerate(s.writes):
                out += [(f"s{j}_scale{w}", scale, "scalar"), (f"s{j}_key{w}", key, "key")]
                if value is not None:
                    out.append((f"s{j}_val{w}", value, "value"))
        out += [(f"q{k}", r.query, "key") for k, r in enumerate(self.spec.reads)]
        return out

    def outputs(self) -> list[tuple[str, sympy.Expr, str]]:
        """(variable, expression, space) of every output."""
        return [(f"out{m}", o.expr, o.space) for m, o in enumerate(self.spec.outputs)]

    def _leaf_spaces(self) -> dict[str, set[str]]:
        """The spaces each leaf is loaded in (a scalar leaf: only the scalar space)."""
        spaces: dict[str, set[str]] = {x.name: set() for x in self.spec.leaves if x.role != "dim"}
        exprs = [(e, sp) for _, e, sp in self.pieces] + [(e, sp) for _, e, sp in self.outputs()]
        exprs += [(r.summand, r.space) for r in self.spec.reductions]
        for expr, space in exprs:
            for s in sympy.sympify(expr).free_symbols:
                if s.name in spaces:
                    spaces[s.name].add("scalar" if self.is_scalar(s.name) else space)
        return spaces

    # --- lines -----------------------------------------------------------------------------
    def weight_loads(self) -> list[str]:
        """Weights, loaded once per program."""
        return self._loads(("weight",))

    def leaf_loads(self) -> list[str]:
        """Per-step leaves of the chunk's steps (zero past the sequence's end)."""
        return self._loads(("input", "earlier"))

    def _address(self, leaf, space: str) -> tuple[str, str | None]:
        """(offsets, mask) of a leaf's tile in ``space``: a weight's row of its head, or the chunk's steps."""
        if space == "scalar":
            return ("h", None) if leaf.role == "weight" else ("first + rows", "mask_t")
        size, (lanes, lane_mask) = self.dim_text(leaf.shape[0]), LANES[space]
        if leaf.role == "weight":
            return f"h * {size} + {lanes}", lane_mask
        return step_offsets(size, lanes), MASK[space]

    def _loads(self, roles) -> list[str]:
        """Loads of the leaves of ``roles`` in each space they are read in."""
        lines = []
        for leaf in self.spec.leaves:
            if leaf.role not in roles:
                continue
            for space in sorted(self.spaces[leaf.name]):
                offsets, mask = self._address(leaf, space)
                masked = f", mask={mask}, other=0.0" if mask else ""
                lines.append(
                    f"{self.tile(leaf.name, space)} = tl.load({self.ptr(leaf.name)} + {offsets}{masked}).to(COMPUTE)"
                )
        return lines

    def piece_lines(self) -> list[str]:
        """The reductions, then every piece, each zero past the sequence's end and on padded lanes."""
        lines = []
        for j, r in enumerate(self.spec.reductions):
            summand = self.print(r.summand, r.space)
            lines.append(f"red{j} = tl.sum(tl.where({MASK[r.space]}, {summand}, 0.0), axis=1)")
        seen: dict[tuple, str] = {}
        for var, expr, space in self.pieces:
            same = seen.setdefault((space, sympy.srepr(expr)), var)
            if same != var:  # the same piece twice (mLSTM's C and n share their decay): computed once
                lines.append(f"{var} = {same}")
            else:
                lines.append(f"{var} = tl.where({MASK[space]}, {self.print(expr, space)}, 0.0)")
        return lines

    def output_lines(self) -> list[str]:
        """The outputs from the step values and the reads."""
        return [f"{var} = {self.print(expr, space)}" for var, expr, space in self.outputs()]

    # --- backward ---------------------------------------------------------------------------
    def cotangent_lines(self, exprs: list[tuple[str, sympy.Expr, str]]) -> tuple[list[str], set[str]]:
        """Lines adding ``d_var * d expr / d symbol`` to each symbol's cotangent, for (var, expr, space).

        Leaves gather into ``g<leaf>_<tag>`` per space (a scalar leaf into ``g<leaf>_sc``, summed over the
        lanes), reductions into ``dred<j>``, reads into ``dy<k>``. Returns the lines and the accumulators
        they use (the caller zeroes them).
        """
        lines, used = [], set()
        d_names = {internal(f"d_{var}"): f"d_{var}" for var, _, _ in exprs}
        for var, expr, space in exprs:
            expr = sympy.sympify(expr)
            seed = sympy.Symbol(internal(f"d_{var}"), real=True)
            for symbol in sorted(expr.free_symbols, key=lambda s: s.name):
                target, target_space = self._target(symbol.name, space)
                if target is None:
                    continue
                derivative = sympy.diff(expr, symbol)
                if derivative == 0:
                    continue
                text = self.print(seed * derivative, space, d_names)
                text = f"tl.where({MASK[space]}, {text}, 0.0)"
                if target_space != space:
                    text = f"tl.sum({text}, axis=1)"
                lines.append(f"{target} += {text}")
                used.add((target, target_space))
        return lines, used

    def _target(self, name: str, space: str) -> tuple[str | None, str]:
        """The cotangent accumulator of a symbol read in ``space``, and that accumulator's space."""
        if name in self.reduction:
            return "d" + self.reduction[name], "scalar"
        if name in self.read:
            read = next(r for r in self.spec.reads if r.symbol == name)
            return "d" + self.read[name], "scalar" if self.spec.state(read.state).vector else "value"
        if name in self.roles:
            space = "scalar" if self.is_scalar(name) else space
            return self.tile(name, space, grad=True), space
        return None, space

    def reduction_cotangents(self) -> tuple[list[str], set[str]]:
        """Each reduction's cotangent into its summand's symbols, outermost reduction first."""
        lines, used = [], set()
        for j in reversed(range(len(self.spec.reductions))):
            r = self.spec.reductions[j]
            more, more_used = self.cotangent_lines([(f"red{j}_summand", r.summand, r.space)])
            lines.append(f"d_red{j}_summand = dred{j}[:, None] + {ZERO[r.space]}")
            lines += more
            used |= more_used
        return lines, used

    def leaf_gradient_lines(self, used: set) -> tuple[list[str], list[str], list[str]]:
        """(per-chunk stores of per-step leaves' cotangents, per-chunk weight accumulation, final weight stores)."""
        stores, accumulate, finals = [], [], []
        targets = {target for target, _ in used}
        for leaf in self.spec.leaves:
            if leaf.role == "dim":
                continue
            ptr = self.ptr(leaf.name, grad=True)
            for space in ("key", "scalar", "value"):
                tile = self.tile(leaf.name, space, grad=True)
                if tile not in targets:
                    continue
                offsets, mask = self._address(leaf, space)
                if leaf.role != "weight":
                    stores.append(f"tl.atomic_add({ptr} + {offsets}, {tile}, mask={mask})")
                    continue
                acc = self.accumulator(leaf.name, space)
                accumulate.append(f"{acc} += tl.sum({tile}, axis=0)")
                if mask is None:  # a scalar weight: its accumulator is a [1] tile
                    finals.append(f"tl.atomic_add({ptr} + {offsets} + tl.arange(0, 1), {acc})")
                else:
                    finals.append(f"tl.atomic_add({ptr} + {offsets}, {acc}, mask={mask})")
        return stores, accumulate, finals

    def accumulator(self, name: str, space: str) -> str:
        """A weight's on-chip cotangent accumulator in ``space``."""
        kind, user = self.roles[name]
        return derived("acc", TAG[space], kind, user=user)

    def weight_accumulators(self, used: set) -> list[str]:
        """Zeroed on-chip accumulators of the weights' cotangents."""
        lines = []
        targets = {target for target, _ in used}
        for leaf in self.spec.leaves:
            if leaf.role != "weight":
                continue
            for space in ("key", "scalar", "value"):
                if self.tile(leaf.name, space, grad=True) in targets:
                    lines.append(f"{self.accumulator(leaf.name, space)} = {ACCUMULATOR[space]}")
        return lines


def value_space_whole(spec: ChunkedSpec) -> bool:
    """Whether some piece sums over the value dim (then one program holds all of it).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> value_space_whole(NS(reductions=(NS(space="value"),), outputs=()))
        True
    """
    return any(r.space == "value" for r in spec.reductions) or any(o.space != "value" for o in spec.outputs)
