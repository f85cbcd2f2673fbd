"""The Plan: everything the analysis decided about a cell, and its explanation.

Example:
    >>> plan = analyse_source(open("examples/gla.rnn").read())
    >>> plan.strategy
    'chunked'
    >>> "diagonal along axis -2" in plan.explain()
    True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rnnc.compiler.affine import Transition, analyse_states
from rnnc.compiler.derivatives import Derivatives, derive
from rnnc.compiler.ir import IR
from rnnc.compiler.lower import lower_source
from rnnc.compiler.nested import nest, show
from rnnc.compiler.proof import Proof
from rnnc.compiler.shapes import show as show_shape
from rnnc.compiler.strategy import choose_strategy


@dataclass(frozen=True)
class Plan:
    """The analysed cell: IR, transitions, strategy with reasons, proof and derivatives."""

    ir: IR
    transitions: tuple[Transition, ...]
    strategy: str
    reasons: tuple[str, ...]
    proof: Proof | None
    derivatives: Derivatives

    def key(self) -> str:
        """A stable hash of the plan (the IR's key plus the decisions).

        Example:
            >>> len(analyse_source(open("examples/hgrn.rnn").read()).key())
            16
        """
        text = self.ir.canonical() + "\n" + self.strategy
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def explain(self) -> str:
        """The analysis as text a person reads.

        Example:
            >>> print(analyse_source(open("examples/hgrn.rnn").read()).explain().splitlines()[0])
            cell hgrn(D): strategy scan
        """
        ir = self.ir
        lines = [f"cell {ir.cell}({', '.join(ir.dims)}): strategy {self.strategy}"]
        for kind in ("input", "weight", "state"):
            decls = [d for d in ir.decls if d.kind == kind]
            if decls:
                lines.append(f"  {kind}s: " + ", ".join(f"{d.name} {show_shape(d.shape)}" for d in decls))
        lines.append("updates, in previous states, inputs and weights:")
        for t in self.transitions:
            lines.append(f"  {t.state}' = {show(t.update)}")
        for out in ir.outputs:
            lines.append(f"  emit {out.name} = {show(nest(ir, out.expr))}")
        lines.append("transitions:")
        lines += [f"  {t.describe()}" for t in self.transitions]
        lines.append("why this strategy:")
        lines += [f"  {r}" for r in self.reasons]
        if self.proof is not None:
            lines.append("associativity proof:" if self.proof.holds else "associativity proof (failed):")
            lines += [f"  {line}" for line in self.proof.lines]
        count = sum(len(p.wrt) for p in self.derivatives.partials)
        lines.append(
            f"derivatives: {count} partials of {len(self.derivatives.partials)} pointwise expressions, "
            f"{len(self.derivatives.common)} common subexpressions"
        )
        return "\n".join(lines)


def analyse(ir: IR) -> Plan:
    """Run the analysis on a lowered cell.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> analyse(lower_source(open("examples/lstm.rnn").read())).strategy
        'sequential'
    """
    transitions = analyse_states(ir)
    strategy, reasons, proof = choose_strategy(ir, transitions)
    return Plan(ir, tuple(transitions), strategy, reasons, proof, derive(ir))


def analyse_source(text: str | bytes, filename: str = "<string>", name: str | None = None) -> Plan:
    """Parse, lower and analyse one cell of ``text``.

    Example:
        >>> analyse_source(open("examples/deltanet.rnn").read()).strategy
        'chunked'
    """
    return analyse(lower_source(text, filename, name))
