"""``rnnc.compile``: the pipeline from text to a callable cell, read top to bottom.

Example:
    >>> import rnnc
    >>> rnnc.compile("examples/lstm.rnn").strategy
    'sequential'
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from rnnc.compiler import Plan, analyse, lower_source
from rnnc.errors import RnncError
from rnnc.runtime.cell import Cell


def read_source(src: str | Path) -> tuple[str | bytes, str]:
    """The text and file name of ``src``: a path (a ``Path``, or a one-line string naming an
    existing file or ending in ``.rnn``), or else the source text itself.

    Example:
        >>> read_source("cell c(H) { state h: [H]; h = h }")[1]
        '<string>'
    """
    if not isinstance(src, (str, Path)):
        raise TypeError(f"rnnc.compile needs a path or the source text of a cell, has {type(src).__name__}")
    if isinstance(src, str) and "\n" not in src and "{" not in src:
        if Path(src).exists() or src.strip().endswith(".rnn"):
            src = Path(src)
    if isinstance(src, Path):
        path = src
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise RnncError(f"{path}: error: cannot read: {exc.strerror or exc}") from None
    return src, "<string>"


def compile(  # noqa: A001 - the public name the interface promises
    src: str | Path,
    *,
    name: str | None = None,
    backend: str = "auto",
    gpu: str | None = None,
    dtype: str | None = None,
) -> Cell:
    """Compile a cell from a ``.rnn`` path or source text.

    ``gpu`` and ``dtype`` choose the tiling of the Triton backend (a later stage);
    the reference backend ignores them.

    Example:
        >>> import rnnc
        >>> rnnc.compile("cell c(H) { input x: [H]; state h: [H]; h = h + x; emit h }").strategy
        'scan'
    """
    text, filename = read_source(src)
    return compile_text(text, filename, name, backend)


def compile_text(text: str | bytes, filename: str, name: str | None, backend: str) -> Cell:
    """The pipeline on source text; the analysis is remembered per text, file name and cell.

    Example:
        >>> compile_text("cell c(H) { input x: [H]; state h: [H]; h = h + x; emit h }", "<string>", None, "auto").name
        'c'
    """
    plan = _analysed(text, filename, name)
    return Cell(plan, backend, origin=(text, filename, name))  # Plan -> a callable (PyTorch loop or Triton kernels)


@lru_cache(maxsize=256)
def _analysed(text: str | bytes, filename: str, name: str | None) -> Plan:
    ir = lower_source(text, filename, name)  # text -> AST -> IR (names resolved, shapes inferred)
    return analyse(ir)  # IR -> Plan (affine form, structure, proof, strategy, derivatives)
