"""Counting the bytes Triton kernels load and store, by wrapping the interpreter's memory operations."""

import contextlib

import numpy as np


@contextlib.contextmanager
def count_bytes():
    """Yields a dict whose 'load' and 'store' grow with every byte a kernel moves (masked-off lanes excluded)."""
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    counts = {"load": 0, "store": 0}
    originals = {
        name: getattr(builder, name)
        for name in ("create_load", "create_store", "create_masked_load", "create_masked_store")
    }

    def size(ptrs, mask=None) -> int:
        itemsize = np.dtype(interpreter._get_np_dtype(ptrs.get_element_ty())).itemsize
        lanes = ptrs.data.size if mask is None else int(np.count_nonzero(mask.data))
        return lanes * itemsize

    def create_load(self, ptr, *args):
        counts["load"] += size(ptr)
        return originals["create_load"](self, ptr, *args)

    def create_store(self, ptr, val, *args):
        counts["store"] += size(ptr)
        return originals["create_store"](self, ptr, val, *args)

    def create_masked_load(self, ptrs, mask, *args):
        counts["load"] += size(ptrs, mask)
        return originals["create_masked_load"](self, ptrs, mask, *args)

    def create_masked_store(self, ptrs, value, mask, *args):
        counts["store"] += size(ptrs, mask)
        return originals["create_masked_store"](self, ptrs, value, mask, *args)

    replacements = {
        "create_load": create_load,
        "create_store": create_store,
        "create_masked_load": create_masked_load,
        "create_masked_store": create_masked_store,
    }
    for name, function in replacements.items():
        setattr(builder, name, function)
    try:
        yield counts
    finally:
        for name, function in originals.items():
            setattr(builder, name, function)


def nbytes(tensors) -> int:
    """Bytes the tensors hold."""
    return sum(t.numel() * t.element_size() for t in tensors)


def inference_traffic(cell, tensors: dict, states: dict) -> tuple[dict, int, int]:
    """Run ``cell`` at inference and return (bytes moved, ideal bytes read, ideal bytes written).

    The ideal reads every input, weight and initial state once and writes every output and
    final state once.
    """
    import torch

    tensors = {k: v.detach() for k, v in tensors.items()}
    states = {k: v.detach() for k, v in states.items()}
    with torch.no_grad(), count_bytes() as moved:
        out = cell(state=states, **tensors)
    read = nbytes([*tensors.values(), *states.values()])
    written = nbytes([*out.outputs.values(), *out.state.values()])
    return moved, read, written
