"""Variable-length batches: ``cu_seqlens`` checks, and running each packed sequence alone.

Inputs are packed ``[1, total_T, NH, *shape]`` (sequence ``b`` owns rows ``cu_seqlens[b]`` up
to ``cu_seqlens[b + 1]``), initial and final states are ``[N, NH, *shape]``, as in
flash-linear-attention. Shape, dtype and device checks run when a call is bound; the values
(starts at 0, never decreases, ends at total_T) are checked where they are first read.

Example:
    >>> import torch
    >>> sequence_bounds(torch.tensor([0, 1, 18, 82]), 82)
    [0, 1, 18, 82]
    >>> sequence_bounds(torch.tensor([0, 5, 3]), 3)
    Traceback (most recent call last):
    ...
    ValueError: cu_seqlens: needs non-decreasing offsets, has 5 then 3 (entries 1 and 2)
"""

from __future__ import annotations

import torch

from rnnc.compiler.ir import IR

OFFSET_DTYPES = (torch.int32, torch.int64)


def packed_arguments(ir: IR, given: list, cu_seqlens, device: torch.device) -> tuple[int, list]:
    """Check ``cu_seqlens`` and the packed layout; return N and ``given`` with each state cut to one
    row, so that the ordinary binder checks the rest of the states' shapes against B = 1.

    Example:
        >>> import torch
        >>> from rnnc.compiler import lower_source
        >>> ir = lower_source(open("examples/hgrn.rnn").read())
        >>> x = torch.zeros(2, 5, 1, 3)
        >>> packed_arguments(ir, [(ir.inputs[0], x)], torch.tensor([0, 5]), x.device)
        Traceback (most recent call last):
        ...
        ValueError: x: with cu_seqlens, inputs are packed [1, total_T, NH, D]; has batch 2 (shape [2, 5, 1, 3])
    """
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens: needs a torch.Tensor of int32 or int64 offsets, has {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in OFFSET_DTYPES:
        raise ValueError(f"cu_seqlens: needs int32 or int64 offsets, has {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(
            f"cu_seqlens: needs one axis [N + 1] with N >= 1 sequences (0, ends...), has shape {list(cu_seqlens.shape)}"
        )
    if cu_seqlens.device != device:
        raise ValueError(f"cu_seqlens: on {cu_seqlens.device}, but the inputs are on {device}")
    n_seq = cu_seqlens.shape[0] - 1
    out = []
    for decl, value in given:
        if decl.kind == "input" and value.dim() >= 1 and value.shape[0] != 1:
            own = ", ".join(str(d) for d in decl.shape)
            raise ValueError(
                f"{decl.name}: with cu_seqlens, inputs are packed [1, total_T, NH{', ' + own if own else ''}]; "
                f"has batch {value.shape[0]} (shape {list(value.shape)})"
            )
        if decl.kind == "state" and value.dim() >= 1:
            if value.shape[0] != n_seq:
                own = ", ".join(str(d) for d in decl.shape)
                raise ValueError(
                    f"{decl.name}: with cu_seqlens of {n_seq} sequences, states are [N, NH{', ' + own if own else ''}] "
                    f"with N = {n_seq}; has {value.shape[0]} (shape {list(value.shape)})"
                )
            value = value.narrow(0, 0, 1)
        out.append((decl, value))
    return n_seq, out


def sequence_bounds(cu_seqlens: torch.Tensor, total: int) -> list[int]:
    """The offsets as Python ints, checked: start at 0, non-decreasing, end at ``total``.

    Example:
        >>> import torch
        >>> sequence_bounds(torch.tensor([1, 4], dtype=torch.int32), 4)
        Traceback (most recent call last):
        ...
        ValueError: cu_seqlens: needs to start at 0, starts at 1
    """
    bounds = [int(v) for v in cu_seqlens.tolist()]
    if bounds[0] != 0:
        raise ValueError(f"cu_seqlens: needs to start at 0, starts at {bounds[0]}")
    for i in range(len(bounds) - 1):
        if bounds[i + 1] < bounds[i]:
            raise ValueError(
                f"cu_seqlens: needs non-decreasing offsets, has {bounds[i]} then {bounds[i + 1]} "
                f"(entries {i} and {i + 1})"
            )
    if bounds[-1] != total:
        raise ValueError(
            f"cu_seqlens: needs to end at the packed inputs' length T = {total} (their axis 1), ends at {bounds[-1]}"
        )
    return bounds


def each_sequence(call, ir: IR, run_one) -> tuple[dict, dict]:
    """Run every packed sequence of a call alone with ``run_one(tensors, state) -> (outputs, finals)``
    and put the results back together: outputs packed ``[1, total_T, ...]``, finals ``[N, ...]``.

    Correct for any backend; one run per sequence (what the Triton kernels do until they read
    per-sequence offsets themselves).
    """
    bounds = sequence_bounds(call.cu_seqlens, call.T)
    outputs: dict[str, list] = {o.name: [] for o in ir.outputs}
    finals: dict[str, list] = {d.name: [] for d in ir.states}
    for b in range(call.N):
        bos, eos = bounds[b], bounds[b + 1]
        state = {name: value[b : b + 1] for name, value in call.states.items()}
        if eos == bos:  # an empty sequence: no output rows, the final state is the initial one
            for decl in ir.states:
                given = state.get(decl.name)
                shape = (1, call.NH, *call.shape_of(decl.shape))
                zeros = torch.zeros(shape, dtype=call.compute_dtype, device=call.device)
                finals[decl.name].append(zeros if given is None else given.to(call.compute_dtype).clone())
            continue
        tensors = {name: x[:, bos:eos] for name, x in call.inputs.items()}
        tensors.update(call.weights)
        out, fin = run_one(tensors, state)
        for name, value in out.items():
            outputs[name].append(value)
        for name, value in fin.items():
            finals[name].append(value)
    packed = {}
    for o in ir.outputs:
        pieces = outputs[o.name]
        if pieces:
            packed[o.name] = torch.cat(pieces, dim=1)
        else:
            shape = (1, 0, call.NH, *call.shape_of(o.shape))
            packed[o.name] = torch.empty(shape, dtype=call.dtype, device=call.device)
    return packed, {name: torch.cat(pieces, dim=0) for name, pieces in finals.items()}
