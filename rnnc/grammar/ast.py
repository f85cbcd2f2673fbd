"""The typed syntax tree of a ``.rnn`` file; every node carries its source span.

Example:
    >>> from rnnc.grammar import parse
    >>> prog = parse("cell e(H) {\\n input x: [H]\\n state h: [H]\\n h = x\\n}")
    >>> prog.cells[0].decls[1].kind
    'state'
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnc.errors import Span


@dataclass(frozen=True)
class Number:
    """A numeric literal such as ``2`` or ``1e-6``."""

    value: float
    text: str
    span: Span


@dataclass(frozen=True)
class Name:
    """A reference to a declared tensor or a local."""

    name: str
    span: Span


@dataclass(frozen=True)
class Unary:
    """``-operand`` (the only unary operator with an effect)."""

    op: str
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Binary:
    """``left OP right`` for ``+ - * / @ **`` and the comparisons."""

    op: str
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Call:
    """``function(arg, ..., name=value, ...)``: positional arguments, then keyword arguments."""

    function: str
    args: tuple["Expr", ...]
    span: Span
    name_span: Span
    keywords: tuple["Keyword", ...] = ()


@dataclass(frozen=True)
class Keyword:
    """``name=value`` inside a call (``max(x, axis=0)``)."""

    name: str
    value: "Expr"
    span: Span


@dataclass(frozen=True)
class Index:
    """``operand[:, None, ...]``: ``items`` holds ``":"`` or ``None`` per position."""

    operand: "Expr"
    items: tuple[str | None, ...]
    span: Span


@dataclass(frozen=True)
class Transpose:
    """``operand.T``."""

    operand: "Expr"
    span: Span


Expr = Number | Name | Unary | Binary | Call | Index | Transpose


@dataclass(frozen=True)
class DimFactor:
    """One factor of a dimension: an integer or a dim name."""

    value: int | str
    span: Span


@dataclass(frozen=True)
class Dim:
    """A dimension written as a product of factors, e.g. ``2*H``."""

    factors: tuple[DimFactor, ...]
    span: Span


@dataclass(frozen=True)
class Decl:
    """``input|weight|state NAME: [shape]``."""

    kind: str
    name: str
    shape: tuple[Dim, ...]
    span: Span
    name_span: Span


@dataclass(frozen=True)
class Assign:
    """``a, b = expr`` (one or more targets)."""

    targets: tuple[str, ...]
    target_spans: tuple[Span, ...]
    value: Expr
    span: Span


@dataclass(frozen=True)
class Emit:
    """``emit NAME`` or ``emit NAME = expr`` (``value`` is None for the first)."""

    name: str
    value: Expr | None
    span: Span
    name_span: Span


Stmt = Decl | Assign | Emit


@dataclass(frozen=True)
class Cell:
    """``cell NAME(DIM, ...) { ... }``."""

    name: str
    dims: tuple[str, ...]
    dim_spans: tuple[Span, ...]
    body: tuple[Stmt, ...]
    span: Span
    name_span: Span

    @property
    def decls(self) -> tuple[Decl, ...]:
        """The declarations, in source order."""
        return tuple(s for s in self.body if isinstance(s, Decl))


@dataclass(frozen=True)
class Program:
    """All cells of one file; ``span`` is where its text starts (its first non-blank character)."""

    cells: tuple[Cell, ...]
    filename: str
    span: Span | None = None
