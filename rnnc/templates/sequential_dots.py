"""What the sequential kernels store so that the launcher forms the dots' weight gradients.

A ``tl.dot`` against an on-chip weight gets its weight's gradient after the backward kernel, as
one contraction over all batch rows and steps (``rnnc/runtime/sequential_weights.py``); this says,
per dot, where each step's result cotangent and operand are found.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.sequential_step import SequentialStep
    >>> SequentialStep(analyse_source(open("examples/lstm.rnn").read())).dot_pointers(5)
    ('a5_cotangent_ptr', None)
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.templates.sequential_tiles import REDUCTIONS, statement_of, unsupported


@dataclass(frozen=True)
class DotGradient:
    """A ``tl.dot`` whose weight's gradient the launcher forms after the backward kernel, as one
    contraction over every batch row and step: ``dW = sum v^T dY`` (matmul semantics, any gates).

    ``cotangent`` says where each step's cotangent ``dY`` of the dot's result is: ``stored`` (the
    kernel stores it, ``[B, T, NH, *result]`` at ``cotangent_pointer``), ``input NAME`` (it is that
    input's gradient) or ``zero``. A computed operand ``v`` is stored at ``operand_pointer``; an
    operand that is a state (``operand_kind``) is the previous state, an input the input itself.
    ``side`` is the weight's argument, ``weight_axes`` the view that places it there.
    """

    index: int
    weight: str
    side: int
    ranks: tuple[int, int]
    weight_axes: tuple[int, ...]
    operand: str | None
    operand_kind: str
    cotangent: str
    cotangent_pointer: str | None
    operand_pointer: str | None


class DotGradients:
    """The dots' stored cotangents and operands, and what the step kernels need of the dots, as a mixin
    of ``SequentialStep`` (``layout``, ``ir``, ``tiles``, ``plan`` and the ``sources`` that
    ``gradient_stores`` fills)."""

    def dot_pointers(self, index: int) -> tuple[str, str | None]:
        """The pointers of dot ``index``'s stored result cotangents and (where computed) its operand."""
        c = self.layout.contractions[index]
        atom = self.ir.atoms[index]
        operand = atom.args[c.operand]
        view = self.ir.view(operand) if isinstance(operand, sympy.Symbol) else None
        leaf = self.ir.atom(view.atom) if view is not None and view.is_plain() else None
        rank = len(atom.arg_shapes[c.operand])
        plain = leaf is not None and leaf.op in ("state", "input") and len(leaf.shape) == rank
        stem = self.tiles[atom.name].role  # a dot result is a value: its own stem (a5)
        return f"{stem}_cotangent_ptr", None if plain else f"{stem}_operand_ptr"

    def dot_gradients(self) -> list[DotGradient]:
        """What the launcher needs to add up each on-chip weight's gradient after the backward kernel
        (known once the backward lines and ``gradient_stores`` ran)."""
        found = []
        for i, c in sorted(self.layout.contractions.items()):
            if c.kind != "dot":
                continue
            atom = self.ir.atoms[i]
            side = 1 - c.operand
            cotangent, operand = self.dot_pointers(i)
            source = self.sources.get(f"dot {i}", "stored")
            leaf = None if operand else self.ir.view(atom.args[c.operand]).atom
            found.append(
                DotGradient(
                    index=i,
                    weight=c.weight.weight,
                    side=side,
                    ranks=(len(atom.arg_shapes[0]), len(atom.arg_shapes[1])),
                    weight_axes=self.ir.view(atom.args[side]).axes,
                    operand=leaf,
                    operand_kind=self.ir.atom(leaf).op if leaf else "stored",
                    cotangent=source,
                    cotangent_pointer=cotangent if source == "stored" else None,
                    operand_pointer=operand,
                )
            )
        return found

    def weight_sums(self) -> dict[str, str]:
        """Weights read pointwise whose gradient the launcher sums from a stored tensor: name -> source."""
        return {k.split(" ", 1)[1]: v for k, v in sorted(self.sources.items()) if k.startswith("weight ")}

    # --- a head split over programs -----------------------------------------------------------
    def _check_split(self) -> None:
        """A split head covers vector tiles, and matmuls of on-chip weights with states or inputs."""
        for i, atom in enumerate(self.ir.atoms):
            tile = self.tiles[atom.name]
            dot_only = atom.op == "weight" and atom.name not in self.layout.pointwise_weights
            reduces = atom.op in REDUCTIONS and self.arg_space(i, 0).dims
            if (len(tile.space.dims) > 1 and not dot_only) or reduces:
                raise unsupported(
                    self.plan,
                    f"a split head needs vectors along one dim, and {atom.name} is not",
                    statement_of(self.ir, atom.name),
                )
            c = self.layout.contractions.get(i)
            if c is None:
                continue
            operand = atom.args[c.operand] if c.kind == "dot" else None
            leaf = self.ir.view(operand).atom if isinstance(operand, sympy.Symbol) else None
            kinds = {d.name for d in (*self.ir.states, *self.ir.inputs)}
            if c.kind != "dot" or leaf not in kinds or len(self.arg_space(i, c.operand).axes) != 1:
                raise unsupported(
                    self.plan,
                    f"a split head needs each matmul to contract a state or an input, and {atom.name} "
                    f"contracts {operand if operand is not None else atom.args[0]}",
                    statement_of(self.ir, atom.name),
                )

    def contracted_leaves(self) -> list[str]:
        """Names of the states and inputs the matmuls contract (the step kernels stream these)."""
        found = set()
        for i, c in self.layout.contractions.items():
            if c.kind == "dot":
                found.add(self.ir.view(self.ir.atoms[i].args[c.operand]).atom)
        return sorted(found)
