"""The rnnc language: grammar, syntax tree and parser.

Example:
    >>> parse("cell c(H) { state h: [H]; h = h }").cells[0].name
    'c'
"""

from rnnc.grammar.parse import parse

__all__ = ["parse"]
