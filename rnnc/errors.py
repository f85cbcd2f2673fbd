"""Errors that rnnc raises, and how a source location is shown.

Every error a user can cause is an :class:`RnncError`. Errors tied to a place
in a ``.rnn`` file carry a :class:`Span` and print as
``FILE:LINE:COL: error: MESSAGE`` followed by the source line and a caret.

Example:
    >>> src = Source("cell c(H) {\\nh = q\\n}\\n", "c.rnn")
    >>> print(ParseError("undefined name 'q'", src.span(16, 17)))
    c.rnn:2:5: error: undefined name 'q'
        h = q
            ^
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXCERPT_WIDTH = 100  # characters of a source line shown under an error


class RnncError(Exception):
    """Base class of every error rnnc raises on purpose.

    Example:
        >>> isinstance(TilingError("needs 240 KB"), RnncError)
        True
    """


@dataclass(frozen=True)
class Source:
    """The text of one ``.rnn`` file and its name, for locating errors.

    Example:
        >>> Source("a\\nbc", "x.rnn").line_col(3)
        (2, 2)
    """

    text: str
    filename: str = "<string>"

    def line_col(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset.

        Example:
            >>> Source("ab\\ncd").line_col(4)
            (2, 2)
        """
        offset = max(0, min(offset, len(self.text)))
        line = self.text.count("\n", 0, offset) + 1
        start = self.text.rfind("\n", 0, offset) + 1
        return line, offset - start + 1

    def span(self, start: int, end: int) -> "Span":
        """The span of characters ``start:end``.

        Example:
            >>> Source("abc").span(1, 2).start
            1
        """
        return Span(self, start, max(start, end))


@dataclass(frozen=True)
class Span:
    """A range of characters in a :class:`Source`.

    Example:
        >>> Source("x = 1").span(4, 5).location()
        '<string>:1:5'
    """

    source: Source = field(repr=False, compare=False)
    start: int
    end: int

    def location(self) -> str:
        """``FILE:LINE:COL`` of the start.

        Example:
            >>> Source("\\nx").span(1, 2).location()
            '<string>:2:1'
        """
        line, col = self.source.line_col(self.start)
        return f"{self.source.filename}:{line}:{col}"

    def excerpt(self) -> str:
        """The source line of the start, and a caret line under the span.

        Example:
            >>> print(Source("h = q + 1").span(4, 5).excerpt())
                h = q + 1
                    ^
        """
        text = self.source.text
        line_start = text.rfind("\n", 0, self.start) + 1
        line_end = text.find("\n", self.start)
        if line_end < 0:
            line_end = len(text)
        line = text[line_start:line_end]
        col = self.start - line_start
        width = max(1, min(self.end, line_end, self.start + EXCERPT_WIDTH // 2) - self.start)
        if len(line) > EXCERPT_WIDTH:  # show a window around the fault, not a megabyte of line
            first = max(0, col - EXCERPT_WIDTH // 2)
            window = line[first : first + EXCERPT_WIDTH]
            line = ("..." if first else "") + window + ("..." if first + EXCERPT_WIDTH < len(line) else "")
            col = col - first + (3 if first else 0)
        shown = "".join(ch if ch.isprintable() or ch == "\t" else "?" for ch in line)
        pad = "".join("\t" if ch == "\t" else " " for ch in shown[:col])
        return f"    {shown}\n    {pad}{'^' * width}"


class LocatedError(RnncError):
    """An error at a place in a source file.

    Example:
        >>> e = LocatedError("bad", Source("x").span(0, 1))
        >>> str(e).splitlines()[0]
        '<string>:1:1: error: bad'
    """

    def __init__(self, message: str, span: Span | None = None):
        self.message = message
        self.span = span
        super().__init__(self.render())

    def render(self) -> str:
        """The full message with location and excerpt.

        Example:
            >>> LocatedError("bad").render()
            'error: bad'
        """
        if self.span is None:
            return f"error: {self.message}"
        return f"{self.span.location()}: error: {self.message}\n{self.span.excerpt()}"


class ParseError(LocatedError):
    """The text is not a well-formed ``.rnn`` file.

    Example:
        >>> issubclass(ParseError, RnncError)
        True
    """


class AnalysisError(LocatedError):
    """The file parses but breaks a rule of the language (names, shapes, states).

    Example:
        >>> issubclass(AnalysisError, RnncError)
        True
    """


class TilingError(RnncError):
    """No tiling of the cell fits the requested GPU and shape.

    Example:
        >>> str(TilingError("needs 240 KB of shared memory, the H100 has 227 KB"))
        'needs 240 KB of shared memory, the H100 has 227 KB'
    """


class BackendError(RnncError):
    """The requested backend cannot run here, or is not built yet.

    Example:
        >>> issubclass(BackendError, RnncError)
        True
    """


class LocatedBackendError(LocatedError, BackendError):
    """No kernel covers a part of the cell: located at the expression that blocks it.

    Example:
        >>> e = LocatedBackendError("no kernel", Source("S = f(S)", "c.rnn").span(4, 8))
        >>> isinstance(e, BackendError), str(e).splitlines()[0]
        (True, 'c.rnn:1:5: error: no kernel')
    """


class InternalError(RnncError):
    """rnnc itself went wrong (a generated module that does not import): a bug to report, naming the cell.

    Example:
        >>> issubclass(InternalError, RnncError)
        True
    """
