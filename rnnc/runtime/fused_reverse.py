"""One reverse pass of the fused backward (:mod:`rnnc.runtime.fused_codegen`): cotangents from the
seeds of a step (its new states' and outputs') back to the pass's targets.

``step`` targets the previous states (what the loop over time carries backwards), ``all`` the
inputs and weights (every step at once, after the loop). The pass walks the marked IR backwards:
each pointwise expression sends ``seed * partial`` to every atom it reads that leads to a target
(cotangents an atom receives with one partial are summed first, and equal products are written
once), then each structural atom applies its adjoint: a ``weight @ state`` GEMM sends
``g @ weight`` to its vector and, in ``all``, one GEMM over every row to its weight; the parts of a
split are joined into their parent with one stack. The ``step`` pass names each GEMM result's
cotangent, which the backward keeps for every step; ``all`` reads those instead of computing them
again, and a weight whose parts each add to a part of such a result (LSTM's ``b``) sums it over
the rows, so the products and carries that only fed them are not computed at all.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.runtime.fused_codegen import fused_source
    >>> text = fused_source(analyse_source(open("examples/elman.rnn").read()))
    >>> step = text[text.index("def backward(") : text.index("def reverse_all")]
    >>> "gemm.per_head_gemm_backward(" in step, "gemm.weight_cotangent(" in step
    (True, False)
"""

from __future__ import annotations

import re

from rnnc.compiler.shapes import same_shape
from rnnc.runtime.loop_codegen import _emission_order, _full_shape, _pack
from rnnc.runtime.loop_writer import SEQ
from rnnc.runtime.torch_printer import to_torch
from rnnc.templates.names import comment, derived, prefixed

TARGETS = {"step": ("state",), "all": ("input", "weight")}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Pass:
    def __init__(self, writer, mode: str, given: dict[str, str] | None = None):
        self.w = writer
        self.ir = writer.ir
        self.mode = mode
        self.lines: list[str] = []
        self.partials = {(p.kind, p.name, p.index): p for p in writer.derivatives.partials}
        self.terms: dict[str, list[tuple]] = {}  # atom -> (seed, partial code, is a number, axes, rank, shape, full)
        self.joins: dict[
            str, dict[tuple, dict[int, str]]
        ] = {}  # parent -> (axis, count, drop) -> part index -> cotangent
        self.rendered: dict[str, str] = {}
        self.factors: dict[str, tuple[str, str, bool]] = {}  # product variable -> (seed, partial, a number)
        self.temps = 0
        self.reach = self._reach(TARGETS[mode])
        self.given = given or {}  # all: atom -> the variable of its cotangent, kept per step by the step pass
        self.gemm_cotangents: dict[str, str] = {}  # step: GEMM atom -> the variable of its cotangent
        self.join_codes: dict[tuple, str] = {}  # (parts' cotangents, axis, count, drop) -> the first join's code
        self.row_sums: dict[str, str] = {}  # a weight's cotangent -> the product that it sums over the rows
        self.kept_products: dict[str, str] = {}  # a product equal to a given cotangent -> that cotangent

    # ------------------------------------------------------------ which atoms lead to a target

    def _reach(self, kinds) -> dict[str, bool]:
        reach = {a.name: a.op in kinds for a in self.ir.atoms}
        sources = {}
        for a in self.ir.atoms:
            if a.op == "new":
                sources[a.name] = [("update", a.name[:-1], 0)]
            elif not a.is_leaf:
                sources[a.name] = [("arg", a.name, i) for i in range(len(a.args))]
        changed = True
        while changed:
            changed = False
            for name, keys in sources.items():
                if not reach[name] and any(self.leads(k, reach) for k in keys):
                    reach[name] = changed = True
        return reach

    def leads(self, key, reach=None) -> bool:
        reach = self.reach if reach is None else reach
        return any(d != 0 and reach[self.ir.view(label).atom] for label, d in self.partials[key].wrt)

    # ------------------------------------------------------------ emission

    def assign(self, var: str, code: str, note: str = "") -> str:
        """``var = code`` (or the variable that already holds ``code``, or ``code`` if it is one)."""
        if code.isidentifier():
            return code
        if code not in self.rendered:
            self.lines.append(f"    {var} = {code}" + (f"  # {comment(note)}" if note else ""))
            self.rendered[code] = var
        return self.rendered[code]

    def temp(self) -> str:
        self.temps += 1
        return f"q{self.temps - 1}"

    def propagate(self, key, seed: str, full: bool) -> None:
        """Send ``seed * partial`` to every atom the expression ``key`` reads that leads to a target."""
        p = self.partials[key]
        for label, d in p.wrt:
            view = self.ir.view(label)
            if d == 0 or not self.reach[view.atom]:
                continue
            if d.is_number:
                code, number = to_torch(d, {}), True
            else:
                code, number = self.w.item_value(f"partial {p.kind} {p.name} {p.index} {label}")
            self.terms.setdefault(view.atom, []).append((seed, code, number, view.axes, len(p.shape), p.shape, full))

    def materialize(self, name: str, base: str | None = None, var: str | None = None) -> str | None:
        """The variable of an atom's whole cotangent, plus ``base`` if given (None when nothing reaches it).

        A sum ending in one product is one ``torch.addcmul``; the parts of a split whose cotangents
        are each one product are joined as one stack of their seeds times the stacked partials.
        """
        terms, joins = self.terms.pop(name, []), self.joins.pop(name, {})
        if not terms and not joins:
            return base
        atom = self.ir.atom(name)
        groups: dict[tuple, list[str]] = {}
        for seed, *rest in terms:
            groups.setdefault(tuple(rest), []).append(seed)
        pieces = [] if base is None else [base]
        summed = None  # the product, when the cotangent is one product summed over the rows (a weight's)
        for (code, number, axes, rank, shape, full), seeds in groups.items():
            seed = seeds[0] if len(seeds) == 1 else self.assign(self.temp(), " + ".join(seeds))
            product = self._product(seed, code, number)
            if self._in_place(atom, axes, rank, shape, full):
                pieces.append(product)
            else:
                pieces.append(f"ops.unview_to({product}, {axes!r}, {rank}, {self._shape(atom)})")
                if self._in_place(atom, axes, rank, shape, full, batched=True):
                    summed = product
        for (axis, count, drop), grads in joins.items():
            pieces.append(self._join(atom, grads, axis, count, drop))
        if var is None:
            var = self.w.atom_var[name]
            var = f"g{var}" if var[1:].isdigit() else prefixed("g", var)
        code = self._sum(pieces)
        if name in self.given:  # the step pass kept it, step by step: the products here die unless read elsewhere
            self.rendered.setdefault(code, self.given[name])
            if code in self.factors:  # one product: whoever reads it reads the kept value
                self.kept_products[code] = self.given[name]
            return self.given[name]
        var = self.assign(var, code, f"d {name}")
        if summed is not None and len(pieces) == 1:
            self.row_sums[var] = summed
        return var

    def _sum(self, pieces: list[str]) -> str:
        products = [p for p in pieces if p in self.factors and not self.factors[p][2]]
        if len(pieces) < 2 or not products:
            return " + ".join(pieces)
        last = products[-1]
        rest = [p for p in pieces if p is not last]
        seed, code, _ = self.factors[last]
        return f"torch.addcmul({' + '.join(rest)}, {seed}, {code})"

    def _join(self, atom, grads: dict[int, str], axis: int, count: int, drop: int) -> str:
        shape = self._shape(atom)
        factors = [self.factors.get(grads.get(i)) for i in range(count)]
        if self.mode == "step" and all(f is not None and not f[2] and self.w.vec_rows.get(f[1]) for f in factors):
            # per step: one stack and one product instead of a product per part and a stack (the
            # products are dead then); for all steps at once the products are read elsewhere too
            # every seed has the part's shape (each product was in place): one stack, no checks
            join = "torch.stack" if drop else "torch.cat"
            seeds = self.assign(self.temp(), f"{join}([{', '.join(f[0] for f in factors)}], {2 + axis})")
            partials = self.w.joined([f[1] for f in factors], shape, axis, count, drop)
            return self._product(seeds, partials, False)
        summed = [self.row_sums.get(grads.get(i)) for i in range(count)]
        if all(summed):  # each part a product summed over the rows: the rows' join, summed once
            rows = self._joined(summed, f"(batch,) + {self.w.tail(atom.name)}", axis, count, drop)
            return f"ops.fit_cotangent({rows}, {shape})"
        if all(i in grads for i in range(count)):
            return self._joined([grads[i] for i in range(count)], shape, axis, count, drop)
        listed = ", ".join(grads.get(i, "None") for i in range(count))
        return f"ops.join_parts([{listed}], {shape}, {axis}, {count}, {drop})"

    def _joined(self, grads: list[str], shape: str, axis: int, count: int, drop: int) -> str:
        """The join of every part's cotangent: the variable of an equal join (the same cotangents,
        whatever the shape's spelling) when there is one, else its code (assigned when it is not
        the whole of a cotangent)."""
        key = (tuple(grads), axis, count, drop)
        listed = ", ".join(grads)
        code = self.join_codes.setdefault(key, f"ops.join_parts([{listed}], {shape}, {axis}, {count}, {drop})")
        known = self.rendered.get(code)
        return known if known is not None else code

    def _product(self, seed: str, code: str, number: bool) -> str:
        """The variable of ``seed * partial`` (a number or a VEC variable); its factors are remembered."""
        if number and float(code) == 1.0:
            return seed
        if number and float(code) == -1.0:
            var = self.assign(self.temp(), f"-{seed}")
        else:
            var = self.assign(self.temp(), f"{seed} * ({code})" if code.startswith("-") else f"{seed} * {code}")
        self.factors.setdefault(var, (seed, code, number))
        return self.kept_products.get(var, var)

    def _batched(self, atom) -> bool:
        return atom.op in ("state", "new") or self.w.atom_phase[atom.name] >= SEQ

    def _in_place(self, atom, axes, rank: int, shape, full: bool, batched: bool = False) -> bool:
        """Whether a term already has the atom's layout (a plain view of the same shape, every row);
        ``batched``: but for the rows, which a weight's cotangent sums."""
        own = len(atom.shape)
        plain = rank == own and tuple(axes) == tuple(range(-own, 0))
        return full and plain and same_shape(tuple(shape), tuple(atom.shape)) and (batched or self._batched(atom))

    def _shape(self, atom) -> str:
        return f"({'batch' if self._batched(atom) else 1},) + {self.w.tail(atom.name)}"

    # ------------------------------------------------------------ structural adjoints

    def adjoint(self, atom, g: str) -> None:
        """Send an atom's cotangent to its arguments (a part's to its parent's join)."""
        if atom.op == "part":
            parent = self.ir.view(atom.args[0]).atom
            axis, index, count, drop = atom.params
            if self.reach[parent]:
                self.joins.setdefault(parent, {}).setdefault((axis, count, drop), {})[index] = g
            return
        needed = [self.leads(("arg", atom.name, i)) for i in range(len(atom.args))]
        if atom.op == "matmul" and atom.name in self.w.gemms:
            side, prepared = self.w.gemms[atom.name]
            prepared = self.w.read_const(prepared)
            if needed[side]:
                dv = self.assign(
                    self.temp(), f"gemm.per_head_gemm_backward({g}, {prepared})", f"d of the vector in {atom.name}"
                )
                self.propagate(("arg", atom.name, side), dv, True)
            if needed[1 - side]:
                v = self._arg(atom, side)
                code = f"gemm.weight_cotangent({g}, {v}, {prepared}, {side == 0})"
                self.propagate(
                    ("arg", atom.name, 1 - side),
                    self.assign(self.temp(), code, f"d of the weight in {atom.name}"),
                    False,
                )
            return
        ranks = [len(s) for s in atom.arg_shapes]
        if atom.op in ("matmul", "outer"):
            a, b = self._arg(atom, 0), self._arg(atom, 1)
            code = (
                f"ops.matmul_backward({g}, {a}, {b}, {ranks[0]}, {ranks[1]})"
                if atom.op == "matmul"
                else (f"ops.outer_backward({g}, {a}, {b})")
            )
            pair = self.assign(self.temp(), code, f"d {atom.name}")
            for i in (0, 1):
                if needed[i]:
                    self.propagate(("arg", atom.name, i), f"{pair}[{i}]", self._full_arg(atom, i))
            return
        axis = atom.params[0] if atom.params else None
        x = self._arg(atom, 0)
        if atom.op == "sum":
            code = f"ops.reduce_sum_backward({g}, {x}, {ranks[0]}, {axis})"
        else:  # max, min: to the entries equal to the result, ties split evenly
            y = self.w.read(self.w.vec_atom(atom.name))
            code = f"ops.reduce_extreme_backward({g}, {x}, {y}, {ranks[0]}, {axis})"
        if needed[0]:
            self.propagate(
                ("arg", atom.name, 0), self.assign(self.temp(), code, f"d {atom.name}"), self._full_arg(atom, 0)
            )

    def _arg(self, atom, i: int) -> str:
        code, number = self.w.item_value(f"arg {atom.name} {i}")
        return code if not number else f"like.new_tensor({code})"

    def _full_arg(self, atom, i: int) -> bool:
        return _full_shape(self.w, atom.args[i], atom.arg_shapes[i])


def write_reverse(writer, mode: str, given: dict[str, str] | None = None) -> tuple[list[str], str, dict]:
    """(lines, return expression, GEMM cotangents) of the ``step`` or ``all`` pass (see the module
    docstring). The step pass names the variable of each ``weight @ state`` result's cotangent
    (atom -> variable); the all pass reads ``given`` ones (atom -> variable of all steps' values)
    instead of computing them again.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.runtime.fused_codegen import forward_writer
        >>> writer, results = forward_writer(analyse_source(open("examples/lstm.rnn").read()))
        >>> lines, returns, kept = write_reverse(writer, "step")
        >>> returns, kept
        ('(q7, q8,)', {'R @ h': 'q6'})
    """
    p = _Pass(writer, mode, given)
    ir = writer.ir
    for r in ir.outputs:
        p.propagate(("output", r.name, 0), derived("dout", user=r.name), True)
    news = {a.name[:-1]: a.name for a in ir.atoms if a.op == "new"}
    for kind, name in reversed(_emission_order(writer)):
        if kind == "update":
            carry = derived("carry", user=name)
            # the cotangent of s' within the step (its later readers), plus what later steps send
            seed = (
                p.materialize(news[name], carry, prefixed("seed", derived("u", user=name))) if name in news else carry
            )
            if any(d != 0 for _, d in p.partials[("update", name, 0)].wrt):
                p.propagate(("update", name, 0), seed, True)
        elif p.reach[name]:
            g = p.materialize(name)
            if g is not None:
                if mode == "step" and name in writer.gemms:
                    p.gemm_cotangents[name] = g
                p.adjoint(ir.atom(name), g)
    if mode == "step":
        returns = _pack([p.materialize(d.name) or "None" for d in ir.states])
    else:
        inputs = [p.materialize(d.name) or "None" for d in ir.inputs]
        weights = [p.materialize(d.name) or "None" for d in ir.weights]
        returns = f"{_pack(inputs)}, {_pack(weights)}"
    return prune(p.lines, identifiers(returns) | set(p.gemm_cotangents.values())), returns, p.gemm_cotangents


def identifiers(code: str) -> set[str]:
    """The names a line of generated code reads (its comment left out).

    Example:
        >>> sorted(identifiers("ops.join_parts([q1, q2], (batch,) + tail5, 0, 2, 1)  # d x"))
        ['batch', 'join_parts', 'ops', 'q1', 'q2', 'tail5']
    """
    return set(_NAME.findall(code.split("  # ")[0]))


def prune(lines: list[str], live: set[str]) -> list[str]:
    """The assignments among ``lines`` that ``live`` needs, in order (dead products dropped).

    Example:
        >>> prune(["    a = x + 1", "    b = a * 2", "    c = y"], {"b"})
        ['    a = x + 1', '    b = a * 2']
    """
    live, keep = set(live), []
    for line in reversed(lines):
        var, _, code = line.strip().partition(" = ")
        if var in live:
            keep.append(line)
            live |= identifiers(code)
    return keep[::-1]
