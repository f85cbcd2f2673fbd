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
from functools import cached_property

import sympy

from rnnc.compiler.affine import Transition
from rnnc.compiler.classify import classify
from rnnc.compiler.component_proofs import prove_components
from rnnc.compiler.components import Component, Stage
from rnnc.compiler.decompose import marked_updates
from rnnc.compiler.derivatives import Derivatives, derive
from rnnc.compiler.ir import IR
from rnnc.compiler.legacy import legacy_transitions
from rnnc.compiler.lower import lower_source
from rnnc.compiler.nested import show
from rnnc.compiler.proof import Proof
from rnnc.compiler.shapes import show as show_shape
from rnnc.compiler.stages import plan_stages
from rnnc.errors import LocatedBackendError


@dataclass(frozen=True)
class Plan:
    """The analysed cell: IR, components and stages, strategy with reasons, proof and derivatives.

    ``transitions`` (one per state) is the older per-state view, kept while templates move to
    ``components`` and ``stages``.
    """

    ir: IR
    transitions: tuple[Transition, ...]
    strategy: str
    reasons: tuple[str, ...]
    proof: Proof | None
    components: tuple[Component, ...] = ()
    stages: tuple[Stage, ...] = ()

    @cached_property
    def derivatives(self) -> Derivatives:
        """The sympy partials of every pointwise expression (computed on first use).

        Example:
            >>> sorted(dict(analyse_source(open("examples/hgrn.rnn").read()).derivatives.of("update", "h").wrt))
            ['g', 'h', 'x']
        """
        return derive(self.ir)

    def component_of(self, state: str) -> Component:
        """The component that holds ``state``.

        Example:
            >>> analyse_source(open("examples/lstm.rnn").read()).component_of("c").kind
            'nonlinear'
        """
        return next(c for c in self.components if state in c.states)

    def blocking_error(self) -> LocatedBackendError | None:
        """Why no Triton kernel runs this cell (the first blocker, located), or None.

        Example:
            >>> plan = analyse_source("cell c(K, V) { input k: [K]; input v: [V]; input a: []; state M: [K, V]; "
            ...     "state P: [K, V]; P = a * P + M; M = M - outer(k, k @ P) + outer(k, v) }")
            >>> print(str(plan.blocking_error()).splitlines()[0])  # doctest: +ELLIPSIS
            <string>:1:...: error: cell c, component 1 (M, P), transition: M, P: the chunked block form of ...
        """
        for stage in self.stages:
            for b in stage.blockers:
                states = ", ".join(self.components[b.component].states)
                message = (
                    f"cell {self.ir.cell}, component {b.component + 1} ({states}), {b.piece}: {b.reason}; "
                    "backend='reference' runs it"
                )
                return LocatedBackendError(message, b.span)
        return None

    def canonical(self) -> str:
        """The text the key hashes: declarations, canonical pieces, outputs and strategy.

        Two spellings of one map give one text; a sequential cell's kernels follow its IR, so
        its IR is part of the text.
        """
        lines = [f"cell {self.ir.cell}({', '.join(self.ir.dims)}) {self.strategy}"]
        lines += [f"{d.kind} {d.name}: {show_shape(d.shape)}" for d in self.ir.decls]
        for c in self.components:
            pieces = (c.affine, c.coupled, c.maxplus, c.linear) if c.kind != "nonlinear" else ()
            lines.append(f"component {c.states} {c.kind} {sympy.srepr(pieces) if pieces else ''}")
        for stage in self.stages:
            lines.append(f"stage {stage.strategy} {stage.components} carries {stage.carries}")
            lines += [f"output {name} = {sympy.srepr(expr)}" for name, expr in stage.output_exprs]
            lines += [f"output {p.name} = {sympy.srepr((p.expr, p.reads))}" for p in stage.output_pieces]
            lines += [f"blocked {b.component} {b.piece}: {b.reason}" for b in stage.blockers]
        if self.strategy == "sequential":
            lines.append(self.ir.canonical())
        return "\n".join(lines)

    def key(self) -> str:
        """A stable hash of the plan (see :meth:`canonical`).

        Example:
            >>> len(analyse_source(open("examples/hgrn.rnn").read()).key())
            16
        """
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]

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
        lines.append("updates (s is the previous value of a state, s' its new value):")
        for name, update in marked_updates(ir).items():
            lines.append(f"  {name}' = {show(update)}")
        for stage in self.stages:
            for name, expr in stage.output_exprs:
                lines.append(f"  emit {name} = {show(expr)}")
        lines.append("components, in the order they run:")
        for c in self.components:
            lines.append(f"  {c.index + 1}. {', '.join(c.states)}: {c.kind}")
            lines += [f"     {line}" for line in c.evidence]
        lines.append("transitions:")
        lines += [f"  {t.describe()}" for t in self.transitions]
        lines.append("why this strategy:")
        lines += [f"  {r}" for r in self.reasons]
        lines.append("stages:")
        for stage in self.stages:
            states = ", ".join(s for i in stage.components for s in self.components[i].states)
            lines.append(
                f"  {stage.strategy}: {states}" + (f" (outputs {', '.join(stage.outputs)})" if stage.outputs else "")
            )
            for piece in stage.output_pieces:
                reads = ", ".join(
                    f"{r.symbol} = {show(r.query)} @ {r.state}{chr(39) if r.new else ''}" for r in piece.reads
                )
                lines.append(f"    emit {piece.name} = {show(piece.expr)}" + (f" with {reads}" if reads else ""))
            lines += [f"    no kernel yet: {b.reason}" for b in stage.blockers]
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
    components, forms = classify(ir)  # IR -> components in topological order, each with its kind
    strategy, reasons, components, stages = plan_stages(ir, components, forms)  # -> which kernel runs what
    proof = prove_components(ir, components) if strategy != "sequential" else None
    transitions = legacy_transitions(ir, components, forms)
    return Plan(ir, tuple(transitions), strategy, reasons, proof, tuple(components), tuple(stages))


def analyse_source(text: str | bytes, filename: str = "<string>", name: str | None = None) -> Plan:
    """Parse, lower and analyse one cell of ``text``.

    Example:
        >>> analyse_source(open("examples/deltanet.rnn").read()).strategy
        'chunked'
    """
    return analyse(lower_source(text, filename, name))
