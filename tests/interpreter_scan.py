"""A faster tl.associative_scan for Triton's interpreter, with the same arithmetic.

The interpreter runs a scan with a user combine function one element at a time (a Python
call per element: about 0.4 ms, so a [16, 32, 16] chunk of Mamba's state costs 3 s). The
kernels' arithmetic does not depend on that: the interpreter folds each line of the scanned
axis left to right, ``out[i] = combine(out[i - 1], x[i])``. ``fast_scan()`` makes the same
fold, in the same order, over whole slices of the other axes at once, so every element sees
exactly the same operations on the same values; ``test_fast_scan_is_bitwise_the_interpreters``
in tests/test_triton_scan.py checks that on a kernel's outputs.
"""

import contextlib

import numpy as np


def _sliced_scan(self, input):
    """ScanOps.generic_scan, vectorised over every axis but the scanned one."""
    data = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in input]
    out = [np.zeros_like(d) for d in data]
    for j, d in enumerate(data):
        out[j][0] = d[0]
    for i in range(1, data[0].shape[0]):
        acc = tuple(self.to_tensor(o[i - 1], arg.dtype) for o, arg in zip(out, input))
        cur = tuple(self.to_tensor(d[i], arg.dtype) for d, arg in zip(data, input))
        ret = self.combine_fn.fn(*acc, *cur)
        ret = ret if isinstance(ret, tuple) else (ret,)
        for j, value in enumerate(ret):
            value = value.handle.data if hasattr(value, "handle") else value
            out[j][i] = np.reshape(value, out[j][i].shape)
    return [self.to_tensor(np.ascontiguousarray(np.moveaxis(o, 0, self.axis)), arg.dtype) for o, arg in zip(out, input)]


@contextlib.contextmanager
def _scan_as(implementation):
    from triton.runtime import interpreter

    before = interpreter.ScanOps.generic_scan
    interpreter.ScanOps.generic_scan = implementation
    try:
        yield
    finally:
        interpreter.ScanOps.generic_scan = before


_ORIGINAL = {}


def _original():
    """The interpreter's own generic scan, remembered the first time it is seen unpatched."""
    from triton.runtime import interpreter

    current = interpreter.ScanOps.generic_scan
    if current is not _sliced_scan:
        _ORIGINAL.setdefault("scan", current)
    return _ORIGINAL["scan"]


def fast_scan():
    """Within the block, the interpreter's generic scan runs slice by slice instead of element by element."""
    _original()
    return _scan_as(_sliced_scan)


def interpreter_scan():
    """Within the block, the interpreter's own generic scan (element by element) runs, even inside fast_scan()."""
    return _scan_as(_original())
