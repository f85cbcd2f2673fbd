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
from rnnc.errors import ParseError, RnncError, Source
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
    if isinstance(src, str) and not src.strip():
        raise ParseError(
            "the source is empty: rnnc.compile needs the path of a .rnn file or the text of a cell "
            "(cell NAME(DIMS) { ... })",
            Source(src).span(0, 0),
        )
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
    precision: str = "ieee",
) -> Cell:
    """Compile a cell from a ``.rnn`` path or source text.

    ``gpu`` (a bundled profile's name, ``"auto"`` for the live device, or a profile file) and
    ``dtype`` (float16, bfloat16, float32, float64) choose the tiling: they are the defaults of
    :meth:`Cell.tiling`, and the profile the Triton backend tiles for on a GPU (else the live
    device's). Both are checked here. The reference backend ignores them.
    ``precision`` is how float32 inputs meet in the kernels' ``tl.dot``: ``"ieee"`` (default, exact
    products) or ``"tf32"`` (tensor cores, about 10 mantissa bits per product, faster); 16-bit inputs
    always use tensor cores with float32 accumulation, float64 is always exact.

    Example:
        >>> import rnnc
        >>> rnnc.compile("cell c(H) { input x: [H]; state h: [H]; h = h + x; emit h }").strategy
        'scan'
        >>> try:
        ...     rnnc.compile("examples/lstm.rnn", dtype="int8")
        ... except ValueError as exc:
        ...     print(exc)
        rnnc.compile: dtype needs one of float16, bfloat16, float32, float64, has 'int8'
    """
    _check_tiling_choice(gpu, dtype)
    text, filename = read_source(src)
    return compile_text(text, filename, name, backend, gpu=gpu, dtype=dtype, precision=precision)


def compile_text(
    text: str | bytes,
    filename: str,
    name: str | None,
    backend: str,
    gpu: str | None = None,
    dtype=None,
    precision: str = "ieee",
) -> Cell:
    """The pipeline on source text; the analysis is remembered per text, file name and cell.

    Example:
        >>> compile_text("cell c(H) { input x: [H]; state h: [H]; h = h + x; emit h }", "<string>", None, "auto").name
        'c'
    """
    try:
        plan = _analysed(text, filename, name)
    except RecursionError:  # the parser bounds nesting; this is the net under it
        raise RnncError(
            f"{filename}: error: the cell nests too deeply to analyse; split long expressions into locals"
        ) from None
    # Plan -> a callable (PyTorch loop or Triton kernels)
    return Cell(plan, backend, origin=(text, filename, name), gpu=gpu, dtype=dtype, precision=precision)


def _check_tiling_choice(gpu: str | None, dtype: str | None) -> None:
    """``gpu`` and ``dtype`` of :func:`compile`: a known profile and dtype, or None."""
    from rnnc.constraints.profiles import DTYPES, profile_names

    if gpu is not None:
        names = profile_names()
        is_file = isinstance(gpu, (str, Path)) and str(gpu).endswith(".json") and Path(gpu).is_file()
        if not is_file and not (isinstance(gpu, str) and (gpu == "auto" or gpu.lower() in names)):
            raise ValueError(
                f"rnnc.compile: gpu needs one of {', '.join(names)}, 'auto' or a profile file (.json), has {gpu!r}"
            )
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"rnnc.compile: dtype needs one of {', '.join(DTYPES)}, has {dtype!r}")


@lru_cache(maxsize=256)
def _analysed(text: str | bytes, filename: str, name: str | None) -> Plan:
    ir = lower_source(text, filename, name)  # text -> AST -> IR (names resolved, shapes inferred)
    return analyse(ir)  # IR -> Plan (affine form, structure, proof, strategy, derivatives)
