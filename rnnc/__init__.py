"""rnnc: a compiler from a small recurrence language to fast kernels with autograd."""

from rnnc.errors import AnalysisError, BackendError, ParseError, RnncError, TilingError

__version__ = "0.1.0"

__all__ = ["AnalysisError", "BackendError", "ParseError", "RnncError", "TilingError", "__version__"]
