"""The chunked kernels' lines for the step values: leaf tiles, the pieces, and the pieces' cotangents.

Names in the generated source are collision-free by construction: everything that comes from a
user's name carries a prefix and an index that no internal name has (``u3_q`` is leaf 3, ``s0_S``
state 0, ``o1_h`` output 1, ``d0_K`` dim 0); internal names never look like that.

Spaces: a tile of the scalar space is ``[STEPS]``, of the key space ``[STEPS, BK]`` (lanes ``kk``),
of the value space ``[STEPS, BV]`` (lanes ``vv``, this program's block of the value dim).

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.chunked_spec import stage_spec
    >>> lines = StepLines(stage_spec(analyse_source(open("examples/gla.rnn").read())))
    >>> lines.leaf_loads()[-1].split(", mask")[0]
    'u3_g_key = tl.load(u3_g_ptr + first * d0_K + (rows[:, None] * d0_K + kk[None, :])'
"""

from __future__ import annotations

import sympy

from rnnc.templates.chunked_spec import ChunkedSpec
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


def sanitize(name: str) -> str:
    """A user's name as part of an identifier (a new value ``m'`` becomes ``m_new``).

    Example:
        >>> sanitize("m'")
        'm_new'
    """
    return name.replace("'", "_new")


class StepLines:
    """Names and lines of the step values of one chunked spec."""

    def __init__(self, spec: ChunkedSpec):
        self.spec = spec
        per_step = [x for x in spec.leaves if x.role != "dim"]
        self.leaf = {x.name: f"u{i}_{sanitize(x.name)}" for i, x in enumerate(per_step)}
        self.dim = {x.name: f"d{i}_{sanitize(x.name)}" for i, x in enumerate(d for d in spec.leaves if d.role == "dim")}
        self.read = {r.symbol: f"y{k}" for k, r in enumerate(spec.reads)}
        self.reduction = {r.symbol.name: f"red{j}" for j, r in enumerate(spec.reductions)}
        self.pieces = self._pieces()
        self.spaces = self._leaf_spaces()

    # --- names -----------------------------------------------------------------------------
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
                names[leaf.name] = f"{self.leaf[leaf.name]}_sc" + (widen if leaf.role != "weight" else "")
            elif leaf.role == "weight":
                names[leaf.name] = f"{self.leaf[leaf.name]}_{TAG[space]}[None, :]"
            else:
                names[leaf.name] = f"{self.leaf[leaf.name]}_{TAG[space]}"
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
        lines = []
        for leaf in self.spec.leaves:
            if leaf.role != "weight":
                continue
            base = self.leaf[leaf.name]
            for space in sorted(self.spaces[leaf.name]):
                if space == "scalar":
                    lines.append(f"{base}_sc = tl.load({base}_ptr + h).to(COMPUTE)")
                else:
                    lanes, mask = LANES[space]
                    size = self.dim_text(leaf.shape[0])
                    lines.append(
                        f"{base}_{TAG[space]} = tl.load({base}_ptr + h * {size} + {lanes}, mask={mask}, other=0.0)"
                        ".to(COMPUTE)"
                    )
        return lines

    def leaf_loads(self) -> list[str]:
        """Per-step leaves of the chunk's steps (zero past the sequence's end)."""
        lines = []
        for leaf in self.spec.leaves:
            if leaf.role not in ("input", "earlier"):
                continue
            base = self.leaf[leaf.name]
            for space in sorted(self.spaces[leaf.name]):
                if space == "scalar":
                    lines.append(f"{base}_sc = tl.load({base}_ptr + first + rows, mask=mask_t, other=0.0).to(COMPUTE)")
                else:
                    lanes, _ = LANES[space]
                    size = self.dim_text(leaf.shape[0])
                    lines.append(
                        f"{base}_{TAG[space]} = tl.load({base}_ptr + {step_offsets(size, lanes)}, "
                        f"mask={MASK[space]}, other=0.0).to(COMPUTE)"
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
        d_names = {f"__d_{var}": f"d_{var}" for var, _, _ in exprs}
        for var, expr, space in exprs:
            expr = sympy.sympify(expr)
            seed = sympy.Symbol(f"__d_{var}", real=True)
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
        if name in self.leaf:
            if self.is_scalar(name):
                return f"g{self.leaf[name]}_sc", "scalar"
            return f"g{self.leaf[name]}_{TAG[space]}", space
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
        for leaf in self.spec.leaves:
            if leaf.role == "dim":
                continue
            base = self.leaf[leaf.name]
            spaces = sorted(sp for (target, sp) in used if target.startswith(f"g{base}_"))
            if not spaces:
                continue
            for space in spaces:
                tile = f"g{base}_{TAG[space]}"
                if leaf.role == "weight":
                    acc = f"w{tile}"
                    if space == "scalar":
                        accumulate.append(f"{acc} += tl.sum({tile}, axis=0)")
                        finals.append(f"tl.atomic_add({base}_grad_ptr + h + tl.arange(0, 1), {acc})")
                    else:
                        lanes, mask = LANES[space]
                        size = self.dim_text(leaf.shape[0])
                        accumulate.append(f"{acc} += tl.sum({tile}, axis=0)")
                        finals.append(f"tl.atomic_add({base}_grad_ptr + h * {size} + {lanes}, {acc}, mask={mask})")
                elif space == "scalar":
                    stores.append(f"tl.atomic_add({base}_grad_ptr + first + rows, {tile}, mask=mask_t)")
                else:
                    lanes, _ = LANES[space]
                    size = self.dim_text(leaf.shape[0])
                    stores.append(
                        f"tl.atomic_add({base}_grad_ptr + {step_offsets(size, lanes)}, {tile}, mask={MASK[space]})"
                    )
        return stores, accumulate, finals

    def weight_accumulators(self, used: set) -> list[str]:
        """Zeroed on-chip accumulators of the weights' cotangents."""
        lines = []
        for leaf in self.spec.leaves:
            if leaf.role != "weight":
                continue
            base = self.leaf[leaf.name]
            for target, space in sorted(used):
                if target.startswith(f"g{base}_"):
                    lines.append(f"w{target} = {ACCUMULATOR[space]}")
        return lines


def value_space_whole(spec: ChunkedSpec) -> bool:
    """Whether some piece sums over the value dim (then one program holds all of it).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> value_space_whole(NS(reductions=(NS(space="value"),), outputs=()))
        True
    """
    return any(r.space == "value" for r in spec.reductions) or any(o.space != "value" for o in spec.outputs)
