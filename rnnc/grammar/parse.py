"""Parse ``.rnn`` text into the syntax tree of :mod:`rnnc.grammar.ast`.

Every failure is a :class:`rnnc.ParseError` with a location; no input, however
malformed, escapes as another exception.

Example:
    >>> prog = parse("cell e(H) {\\n input x: [H]\\n state h: [H]\\n h = x\\n}", "e.rnn")
    >>> [c.name for c in prog.cells]
    ['e']
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import lark
from lark import Token, Transformer, v_args

from rnnc.errors import ParseError, Source, Span
from rnnc.grammar import ast

MAX_NESTING = 64  # brackets deeper than this are refused, so nothing recurses without bound
# operations nested inside one another (a sum of n terms nests n - 1 deep, n unary minuses n deep); the
# compiler walks expressions recursively, and Python's stack (1000 frames) holds some more than this
MAX_DEPTH = 100
MAX_LENGTH = 1_000_000  # characters; a cell is a screenful, this is generous

RESERVED = ("cell", "input", "weight", "state", "emit", "None")

_TOKEN_NAMES = {
    "NAME": "a name",
    "NUMBER": "a number",
    "INT": "an integer",
    "_NL": "a new line",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "COMMA": "','",
    "COLON": "':'",
    "EQUAL": "'='",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "AT": "'@'",
    "DOT": "'.'",
    "COMPARE": "a comparison",
    "INPUT": "'input'",
    "WEIGHT": "'weight'",
    "STATE": "'state'",
    "$END": "the end of the file",
}


class _TooDeep(Exception):
    """Raised by the post-lexer at the first bracket past MAX_NESTING."""

    def __init__(self, start: int, end: int):
        super().__init__(start, end)
        self.start, self.end = start, end


class _BracketFilter:
    """Post-lexer: drops newlines inside ( ) and [ ], and bounds the nesting depth."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        for token in stream:
            if token.type in ("LPAR", "LSQB"):
                depth += 1
                if depth > MAX_NESTING:
                    raise _TooDeep(token.start_pos, token.end_pos)
            elif token.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif token.type == "_NL" and depth > 0:
                continue
            yield token


@lru_cache(maxsize=1)
def _grammar_text() -> str:
    return resources.files("rnnc.grammar").joinpath("rnn.lark").read_text()


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(
        _grammar_text(),
        parser="lalr",
        lexer="contextual",
        postlex=_BracketFilter(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse(text: str | bytes, filename: str = "<string>") -> ast.Program:
    """Parse the text of a ``.rnn`` file.

    Example:
        >>> parse("cell c(H) { state h: [H]; h = h }").cells[0].dims
        ('H',)
    """
    source = Source(_decode(text, filename), filename)
    if len(source.text) > MAX_LENGTH:
        raise ParseError(
            f"file is too long: needs at most {MAX_LENGTH} characters, has {len(source.text)}",
            source.span(0, 0),
        )
    try:
        tree = _parser().parse(source.text)
    except _TooDeep as exc:
        raise ParseError(f"brackets nested deeper than {MAX_NESTING} levels", source.span(exc.start, exc.end)) from None
    except lark.exceptions.UnexpectedInput as exc:
        raise _explain_unexpected(exc, source) from None
    except lark.exceptions.LarkError as exc:  # pragma: no cover - defensive
        raise ParseError(f"cannot parse: {exc}", source.span(0, 0)) from None
    _check_depth(tree, source)
    builder = _AstBuilder(source)
    try:
        cells = tuple(builder.transform(tree).children)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, ParseError):
            raise exc.orig_exc from None
        raise
    first = len(source.text) - len(source.text.lstrip())
    return ast.Program(cells, filename, source.span(first, first + 1))


def _check_depth(tree: lark.Tree, source: Source) -> None:
    """Refuse an expression whose operations nest deeper than MAX_DEPTH, at the expression (walked
    without recursion, so that a deep one cannot fail here the way it would later)."""
    statements = ("assign", "emit", "decl")
    stack = [(tree, 0, None)]  # (node, operations above it in its expression, the expression)
    deepest: dict[int, tuple[int, lark.Tree]] = {}
    while stack:
        node, depth, root = stack.pop()
        if root is None and node.data not in statements and node.data not in ("start", "cell"):
            root, depth = node, 0  # the expression of a statement
        if node.data not in ("paren", "unary", "name", "number", *statements):  # a leaf is no operation, +x is x
            depth += 1
        if root is not None and depth > deepest.get(id(root), (0, root))[0]:
            deepest[id(root)] = (depth, root)
        stack.extend((child, depth, root) for child in node.children if isinstance(child, lark.Tree))
    for depth, root in sorted(deepest.values(), key=lambda d: d[1].meta.start_pos if not d[1].meta.empty else 0):
        if depth > MAX_DEPTH:
            meta = root.meta
            raise ParseError(
                f"expression too deeply nested: needs at most {MAX_DEPTH} operations inside one another, has "
                f"{depth}; split it into locals (a long sum into partial sums)",
                source.span(meta.start_pos, meta.end_pos) if not meta.empty else source.span(0, 0),
            )


def _decode(text: str | bytes, filename: str) -> str:
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = text[: exc.start].decode("utf-8", errors="replace")
        source = Source(prefix + "?", filename)
        raise ParseError(
            f"needs UTF-8 text, has the byte 0x{text[exc.start]:02x} at offset {exc.start}",
            source.span(len(prefix), len(prefix) + 1),
        ) from None


def _explain_unexpected(exc: lark.exceptions.UnexpectedInput, source: Source) -> ParseError:
    pos = getattr(exc, "pos_in_stream", None)
    if pos is None:
        pos = len(source.text)
    if isinstance(exc, lark.exceptions.UnexpectedCharacters):
        ch = source.text[pos] if pos < len(source.text) else ""
        shown = repr(ch) if ch.isprintable() else f"the character U+{ord(ch):04X}" if ch else "end"
        return ParseError(f"unexpected character {shown}", source.span(pos, pos + 1))
    if isinstance(exc, lark.exceptions.UnexpectedToken):
        token = exc.token
        expected = sorted({_TOKEN_NAMES.get(t, _literal(t)) for t in exc.expected})
        if token.type == "$END":
            found = "the end of the file"
            pos = len(source.text)
        else:
            found = "a new line" if token.type == "_NL" else repr(str(token))
            pos = token.start_pos if token.start_pos is not None else pos
        end = pos + (len(str(token)) if token.type not in ("$END", "_NL") else 1)
        hint = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        return ParseError(f"unexpected {found}; expected {hint}", source.span(pos, end))
    return ParseError("unexpected end of the file", source.span(len(source.text), len(source.text)))


def _literal(terminal: str) -> str:
    keywords = {"CELL": "'cell'", "EMIT": "'emit'", "NONE": "'None'", "MORETHAN": "'>'"}
    if terminal in keywords:
        return keywords[terminal]
    if terminal.startswith("__ANON"):
        return "a symbol"
    return terminal.lower().replace("_", " ")


class _AstBuilder(Transformer):
    """Turns lark's parse tree into :mod:`rnnc.grammar.ast` nodes with spans."""

    def __init__(self, source: Source):
        super().__init__(visit_tokens=False)
        self.source = source

    def _unreserved(self, token: Token) -> Token:
        if str(token) in RESERVED:
            raise ParseError(f"{str(token)!r} is a reserved word; pick another name", self._span(token))
        return token

    def _span(self, meta_or_token) -> Span:
        if isinstance(meta_or_token, Token):
            return self.source.span(meta_or_token.start_pos, meta_or_token.end_pos)
        if getattr(meta_or_token, "empty", False):
            return self.source.span(0, 0)
        return self.source.span(meta_or_token.start_pos, meta_or_token.end_pos)

    @v_args(meta=True)
    def cell(self, meta, children):
        name, *rest = children
        dims = [self._unreserved(c) for c in rest if isinstance(c, Token)]
        self._unreserved(name)
        body = tuple(c for c in rest if c is not None and not isinstance(c, Token))
        return ast.Cell(
            str(name),
            tuple(str(d) for d in dims),
            tuple(self._span(d) for d in dims),
            body,
            self._span(meta),
            self._span(name),
        )

    @v_args(meta=True)
    def decl(self, meta, children):
        kind, name, shape = children
        self._unreserved(name)
        return ast.Decl(str(kind), str(name), shape, self._span(meta), self._span(name))

    def shape(self, children):
        return tuple(c for c in children if c is not None)

    @v_args(meta=True)
    def dim(self, meta, children):
        return ast.Dim(tuple(children), self._span(meta))

    def dim_int(self, children):
        (tok,) = children
        return ast.DimFactor(int(tok), self._span(tok))

    def dim_name(self, children):
        (tok,) = children
        return ast.DimFactor(str(tok), self._span(tok))

    @v_args(meta=True)
    def assign(self, meta, children):
        *targets, value = children
        for target in targets:
            self._unreserved(target)
        return ast.Assign(
            tuple(str(t) for t in targets), tuple(self._span(t) for t in targets), value, self._span(meta)
        )

    @v_args(meta=True)
    def emit(self, meta, children):
        name, value = children
        self._unreserved(name)
        return ast.Emit(str(name), value, self._span(meta), self._span(name))

    @v_args(meta=True)
    def compare(self, meta, children):
        left, op, right = children
        return ast.Binary(str(op), left, right, self._span(meta))

    def _binary(op):  # noqa: N805 - a factory used in the class body
        @v_args(meta=True)
        def build(self, meta, children):
            left, right = children
            return ast.Binary(op, left, right, self._span(meta))

        return build

    add = _binary("+")
    sub = _binary("-")
    mul = _binary("*")
    div = _binary("/")
    matmul = _binary("@")
    pow = _binary("**")

    @v_args(meta=True)
    def neg(self, meta, children):
        return ast.Unary("-", children[0], self._span(meta))

    def unary(self, children):  # unary plus: no effect
        return children[-1]

    def paren(self, children):
        return children[0]

    @v_args(meta=True)
    def number(self, meta, children):
        (tok,) = children
        return ast.Number(float(tok), str(tok), self._span(tok))

    def name(self, children):
        (tok,) = children
        self._unreserved(tok)
        return ast.Name(str(tok), self._span(tok))

    @v_args(meta=True)
    def call(self, meta, children):
        fn, *args = children
        args = [a for a in args if a is not None]
        positional = [a for a in args if not isinstance(a, ast.Keyword)]
        keywords = [a for a in args if isinstance(a, ast.Keyword)]
        if keywords and args.index(keywords[0]) < len(positional):
            late = args[args.index(keywords[0]) + 1 :]
            stray = next(a for a in late if not isinstance(a, ast.Keyword))
            raise ParseError("a positional argument cannot follow a keyword argument", stray.span)
        return ast.Call(str(fn), tuple(positional), self._span(meta), self._span(fn), tuple(keywords))

    @v_args(meta=True)
    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(str(name), value, self._span(meta))

    @v_args(meta=True)
    def index(self, meta, children):
        operand, *items = children
        return ast.Index(operand, tuple(items), self._span(meta))

    def full_slice(self, children):
        return ":"

    def new_axis(self, children):
        return None

    @v_args(meta=True)
    def bad_index(self, meta, children):
        raise ParseError(
            "an index needs ':' or 'None' (rnnc indexes only to insert axes), has an expression",
            self._span(meta),
        )

    @v_args(meta=True)
    def attribute(self, meta, children):
        operand, attr = children
        if str(attr) != "T":
            raise ParseError(f"unknown attribute '.{attr}': only '.T' (transpose) exists", self._span(attr))
        return ast.Transpose(operand, self._span(meta))
