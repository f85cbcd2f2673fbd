"""Malformed cells: each gives an RnncError located at the fault, with a message that says what is wrong."""

import pytest

from rnnc import AnalysisError, ParseError, RnncError
from rnnc.compiler import analyse_source

HEADER = "cell c(H) {\n    input x: [H]\n    state h: [H]\n"

# (name, source, expected error class, line, column, fragment of the message)
CASES = [
    ("empty file", "", AnalysisError, 1, 1, "defines none"),
    ("only a comment", "\n  # no cell here\n", AnalysisError, 2, 3, "needs a cell (cell NAME(DIMS) { ... })"),
    # issue 14: deep expressions, and constants that are not finite real numbers, at their place
    ("a long sum", HEADER + "    h = " + " + ".join(["x"] * 400) + "\n}", ParseError, 4, 9, "has 399; split"),
    ("many minuses", HEADER + "    h = h + " + "-" * 800 + "x\n}", ParseError, 4, 9, "has 801; split"),
    ("huge literal", HEADER + "    h = h * 1e999\n}", AnalysisError, 4, 13, "1e999 does not fit a float64"),
    ("negative huge literal", HEADER + "    h = x - 2e400\n}", AnalysisError, 4, 13, "2e400 does not fit"),
    ("log of zero", HEADER + "    h = h + x * log(0)\n}", AnalysisError, 4, 17, "log(0) is infinite"),
    ("root of -1", HEADER + "    h = h + x * sqrt(-1)\n}", AnalysisError, 4, 17, "sqrt(-1) is complex"),
    ("constant overflow", HEADER + "    h = h + exp(1000)\n}", AnalysisError, 4, 13, "beyond float64"),
    ("folded overflow", HEADER + "    h = h + x * 1e200 * 1e200\n}", AnalysisError, 4, 13, "holds the constant"),
    ("missing brace", "cell c(H) {\n    state h: [H]\n    h = h\n", ParseError, 4, 1, "unexpected the end of the file"),
    ("stray token", HEADER + "    h = h h\n}", ParseError, 4, 11, "unexpected 'h'"),
    ("unclosed paren", HEADER + "    h = (h + x\n}", ParseError, 5, 1, "unexpected '}'"),
    ("bad character", HEADER + "    h = h $ x\n}", ParseError, 4, 11, "unexpected character '$'"),
    ("binary junk", "cell c(H) {\x00}", ParseError, 1, 12, "U+0000"),
    ("index with a number", HEADER + "    h = x[0]\n}", ParseError, 4, 11, "needs ':' or 'None'"),
    ("unknown attribute", HEADER + "    h = x.shape\n}", ParseError, 4, 11, "unknown attribute '.shape'"),
    ("keyword as a name", "cell c(H) {\n    state input: [H]\n}", ParseError, 2, 11, "'input' is a reserved word"),
    ("deep nesting", HEADER + "    h = " + "(" * 80 + "h" + ")" * 80 + "\n}", ParseError, 4, 73, "nested deeper"),
    ("undefined name", HEADER + "    h = h + y\n}", AnalysisError, 4, 13, "undefined name 'y'"),
    ("typo gets a hint", HEADER + "    h = h + xx\n}", AnalysisError, 4, 13, "did you mean 'x'"),
    ("unknown function", HEADER + "    h = sigmod(x)\n}", AnalysisError, 4, 9, "did you mean 'sigmoid'"),
    ("wrong arity", HEADER + "    h = tanh(x, h)\n}", AnalysisError, 4, 9, "tanh() needs 1 argument, has 2"),
    (
        "max with three",
        HEADER + "    h = max(x, h, 1)\n}",
        AnalysisError,
        4,
        9,
        "needs 2 arguments (a, b), (x, axis=k)",
    ),
    (
        "state never updated",
        HEADER + "    state c: [H]\n    h = x\n}",
        AnalysisError,
        4,
        5,
        "state 'c' is never updated",
    ),
    ("state updated twice", HEADER + "    h = x\n    h = h + x\n}", AnalysisError, 5, 5, "updated twice"),
    ("assign to input", HEADER + "    x = h\n    h = x\n}", AnalysisError, 4, 5, "cannot assign to input 'x'"),
    ("assign to a dim", HEADER + "    H = h\n    h = x\n}", AnalysisError, 4, 5, "it is a dim"),
    ("unknown dim", "cell c(H) {\n    state h: [K]\n    h = h\n}", AnalysisError, 2, 15, "unknown dim 'K'"),
    ("zero dim", "cell c(H) {\n    state h: [0, H]\n    h = h\n}", AnalysisError, 2, 15, "positive size"),
    (
        "unused dim",
        "cell c(H, K) {\n    state h: [H]\n    h = h\n}",
        AnalysisError,
        1,
        11,
        "dim 'K' appears in no declaration",
    ),
    ("duplicate dim", "cell c(H, H) {\n    state h: [H]\n    h = h\n}", AnalysisError, 1, 11, "listed twice"),
    ("duplicate declaration", HEADER + "    input x: [H]\n    h = x\n}", AnalysisError, 4, 11, "declared twice"),
    ("no state", "cell c(H) {\n    input x: [H]\n    emit y = x\n}", AnalysisError, 1, 6, "declares no state"),
    (
        "shape mismatch in +",
        "cell c(H, K) {\n    input x: [K]\n    state h: [H]\n    h = h + x\n}",
        AnalysisError,
        4,
        9,
        "cannot broadcast [H] and [K]",
    ),
    (
        "matmul contraction",
        "cell c(H, K) {\n    weight R: [H, K]\n    state h: [H]\n    h = R @ h\n}",
        AnalysisError,
        4,
        9,
        "'@' contracts K",
    ),
    (
        "matmul of a scalar",
        "cell c(H) {\n    input s: []\n    state h: [H]\n    h = s @ h\n}",
        AnalysisError,
        4,
        9,
        "at least a vector",
    ),
    (
        "update shape",
        "cell c(H) {\n    weight W: [H, H]\n    state h: [H]\n    h = W * h\n}",
        AnalysisError,
        4,
        5,
        "state 'h' is [H] but its update is [H, H]",
    ),
    (
        "split does not divide",
        "cell c(H) {\n    input x: [3, H]\n    state h: [H]\n    a, b = x\n    h = a\n}",
        AnalysisError,
        4,
        12,
        "cannot split [3, H] into 2 parts",
    ),
    (
        "split a scalar",
        "cell c(H) {\n    input s: []\n    state h: [H]\n    a, b = s\n    h = a * h\n}",
        AnalysisError,
        4,
        12,
        "cannot split a scalar",
    ),
    (
        "cycle between locals",
        HEADER + "    a = b + x\n    b = a * 2\n    h = b\n}",
        AnalysisError,
        4,
        9,
        "cycle between locals: a -> b -> a",
    ),
    (
        "used before assigned",
        HEADER + "    a = b + x\n    b = x\n    h = a\n}",
        AnalysisError,
        4,
        9,
        "used before it is assigned (line 5)",
    ),
    ("local assigned twice", HEADER + "    a = x\n    a = h\n    h = a\n}", AnalysisError, 5, 5, "assigned twice"),
    ("comparison as a value", HEADER + "    h = x < h\n}", AnalysisError, 4, 9, "comparison"),
    ("where needs a condition", HEADER + "    h = where(x, h, x)\n}", AnalysisError, 4, 15, "needs a comparison"),
    ("power needs a number", HEADER + "    h = h ** x\n}", AnalysisError, 4, 14, "exponent"),
    ("transpose of a vector", HEADER + "    h = h.T\n}", AnalysisError, 4, 9, "'.T' needs a matrix"),
    (
        "outer of matrices",
        "cell c(H) {\n    weight W: [H, H]\n    state h: [H]\n    h = sum(outer(W, h), 1)\n}",
        AnalysisError,
        4,
        19,
        "outer() needs vectors",
    ),
    ("sum axis out of range", HEADER + "    h = h + sum(x, 3)\n}", AnalysisError, 4, 20, "out of range"),
    ("sum axis not a literal", HEADER + "    h = h + sum(x, x)\n}", AnalysisError, 4, 20, "integer literal"),
    ("too many index colons", HEADER + "    h = x[:, :]\n}", AnalysisError, 4, 9, "index has 2 ':'"),
    ("emit twice", HEADER + "    h = x\n    emit h\n    emit h\n}", AnalysisError, 6, 10, "emitted twice"),
    ("emit shadows", HEADER + "    h = x\n    emit x = h\n}", AnalysisError, 5, 10, "would shadow 'x'"),
    ("emit unknown", HEADER + "    h = x\n    emit y\n}", AnalysisError, 5, 10, "undefined name 'y'"),
    ("division by zero", HEADER + "    h = h / 0\n}", AnalysisError, 4, 13, "division by the constant zero"),
    (
        "duplicate cells",
        "cell c(H) { state h: [H]; h = h }\ncell c(H) { state h: [H]; h = h }",
        AnalysisError,
        2,
        6,
        "defined twice",
    ),
]


@pytest.mark.parametrize("name,source,error,line,col,fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_cell_gives_a_located_error(name, source, error, line, col, fragment):
    with pytest.raises(error) as caught:
        analyse_source(source, "bad.rnn")
    text = str(caught.value)
    assert fragment in text, text
    first = text.splitlines()[0]
    if line is None:
        assert first.startswith("error:"), text
        return
    assert first.startswith(f"bad.rnn:{line}:{col}: error: "), text
    source_line, caret_line = text.splitlines()[1:3]
    caret_col = caret_line.index("^") - 4
    shown = source_line[4:]
    assert caret_col == col - 1 or shown.startswith("..."), (caret_col, col, text)


def test_there_are_at_least_thirty_malformed_cells():
    assert len(CASES) >= 30


def test_every_error_is_an_rnnc_error():
    assert issubclass(ParseError, RnncError) and issubclass(AnalysisError, RnncError)


def test_several_cells_need_a_name():
    text = "cell a(H) { state h: [H]; h = h }\ncell b(H) { state h: [H]; h = h }"
    with pytest.raises(AnalysisError, match="pick one by name"):
        analyse_source(text)
    assert analyse_source(text, name="b").ir.cell == "b"
    with pytest.raises(AnalysisError, match="no cell named 'z'"):
        analyse_source(text, name="z")
