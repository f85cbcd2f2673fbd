"""rnnc: a compiler from a small recurrence language to fast kernels with autograd.

Example:
    >>> import rnnc
    >>> rnnc.compile("examples/gla.rnn").strategy
    'chunked'
"""

from rnnc.errors import AnalysisError, BackendError, InternalError, ParseError, RnncError, TilingError

__version__ = "0.1.0"


def compile(src, **options):  # noqa: A001 - the public name the interface promises
    """Compile a cell; see :func:`rnnc.api.compile`.

    Example:
        >>> compile("examples/hgrn.rnn").strategy
        'scan'
    """
    from rnnc.api import compile as _compile

    return _compile(src, **options)


def __getattr__(name: str):
    """``rnnc.nn`` (the Layer module) is imported on first use, so ``import rnnc`` stays light.

    Example:
        >>> import rnnc
        >>> rnnc.nn.Layer.__name__
        'Layer'
    """
    if name == "nn":
        import importlib

        return importlib.import_module("rnnc.nn")
    raise AttributeError(f"module 'rnnc' has no attribute {name!r}")


__all__ = [
    "AnalysisError",
    "BackendError",
    "InternalError",
    "ParseError",
    "RnncError",
    "TilingError",
    "__version__",
    "compile",
    "nn",
]
