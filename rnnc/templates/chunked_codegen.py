"""Rendering the chunked kernels of a chunked stage: the Triton module and the order of its arguments.

The stage's pieces (``rnnc.templates.chunked_spec``) are printed by the sympy printer and their
cotangents differentiated by sympy (``chunked_lines``); each linear state contributes its rows and
its chunk forward and backward (``chunked_state``); ``chunked.py.jinja`` only assembles them.

Example:
    >>> from rnnc.compiler import analyse_source
    >>> module = render_chunked(analyse_source(open("examples/gla.rnn").read()))
    >>> module.forward_args
    ['ptr_in_q', 'ptr_in_k', 'ptr_in_v', 'ptr_in_g', 'init_ptr_S', 'out_ptr_o', 'final_ptr_S', 'saved_ptr_S']
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rnnc.errors import BackendError, LocatedBackendError
from rnnc.templates.chunked_lines import MASK, ZERO, StepLines, step_offsets
from rnnc.templates.chunked_spec import ChunkedSpec, stage_spec
from rnnc.templates.chunked_state import StateLines
from rnnc.templates.loading import template
from rnnc.templates.names import derived

PROLOGUE = """pid_v = tl.program_id(0)
pid_bh = tl.program_id(1)
b = pid_bh // NH
h = pid_bh % NH
if VARLEN:  # sequence b is rows seq_starts[b] .. seq_starts[b + 1] of the flat time axis
    bos = tl.load(seq_starts + b).to(tl.int64)
    T_b = (tl.load(seq_starts + b + 1) - bos).to(tl.int32)
    slot_base = bos // STEPS + b
else:
    bos = b.to(tl.int64) * T
    T_b = T + 0
    slot_base = b.to(tl.int64) * tl.cdiv(T, STEPS)
n_chunks = tl.cdiv(T_b, STEPS)
kk = tl.arange(0, BK)
vv = pid_v * BV + tl.arange(0, BV)
uu = tl.arange(0, BU)
mask_k = kk < DK
mask_v = vv < DV
mask_kv = mask_k[:, None] & mask_v[None, :]
state_row = (b * NH + h).to(tl.int64)
step = tl.arange(0, STEPS)
# zero tiles keep constant expressions in COMPUTE precision and shape
zero_sc = tl.zeros([STEPS], dtype=COMPUTE)
zero_key = tl.zeros([STEPS, BK], dtype=COMPUTE)
zero_val = tl.zeros([STEPS, BV], dtype=COMPUTE)
zero_unit = tl.zeros([STEPS, BU], dtype=COMPUTE)
rzero_sc = tl.zeros([CHUNK], dtype=COMPUTE)
rzero_key = tl.zeros([CHUNK, BK], dtype=COMPUTE)
rzero_pairs = tl.zeros([CHUNK, CHUNK], dtype=COMPUTE)
ones_unit = tl.where(uu[None, :] == 0, 1.0, 0.0) + tl.zeros([CHUNK, BU], dtype=COMPUTE)""".splitlines()

CHUNK_PROLOGUE = """t = c * STEPS + step
mask_t = t < T_b
first = (bos + c * STEPS) * NH + h  # [B, T, NH] row of the chunk's first step (int64)
rows = step * NH  # each step's row after the first (int32: addresses need few registers)
mask_tk = mask_t[:, None] & mask_k[None, :]
mask_tv = mask_t[:, None] & mask_v[None, :]
slot = slot_base + c  # where this chunk's starting states are saved""".splitlines()


@dataclass(frozen=True)
class ChunkedModule:
    """The generated module text, its kernels' pointer arguments in order, and the spec it runs."""

    text: str
    forward_args: list
    backward_args: list
    spec: ChunkedSpec
    names: StepLines


def render_chunked(plan) -> ChunkedModule:
    """The Triton module (forward and backward kernels) of a Plan's chunked stage.

    A piece the kernels cannot lower is refused with a BackendError located at the chunked
    component's update (the message names the piece).

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> source = "cell c(K, V) { input q: [K]; input k: [K]; input v: [V]; state S: [K, V]; "
        >>> source += "S = S + outer(exp(k - max(k)), v); emit o = q @ S }"
        >>> try:
        ...     render_chunked(analyse_source(source, "c.rnn"))
        ... except LocatedBackendError as exc:
        ...     print(str(exc).splitlines()[0][:59])
        c.rnn:1:75: error: the chunked kernels do not cover cell c:
    """
    try:
        spec = stage_spec(plan)
    except LocatedBackendError:
        raise
    except BackendError as exc:
        stage = next((s for s in plan.stages if s.strategy == "chunked"), None)
        spans = [plan.components[i].span for i in (stage.components if stage else ())]
        span = next((x for x in spans if x is not None), None)
        if span is None:
            raise
        raise LocatedBackendError(str(exc), span) from None
    return render_spec(spec, plan.key())


def state_pointer(*role: str, state: str) -> str:
    """A pointer argument of a state's values (``init``, ``final``, ``saved``; ``grad`` in front for cotangents)."""
    return derived(*role, "ptr", user=state)


def render_spec(spec: ChunkedSpec, key: str) -> ChunkedModule:
    """The Triton module of a chunked stage's spec (``key`` names the Plan in its docstring)."""
    steps = StepLines(spec)
    states = [StateLines(steps, j) for j in range(len(spec.states))]
    names = [s.name for s in spec.states]
    outputs = [o.name for o in spec.outputs]
    leaf_ptrs = [steps.ptr(x.name) for x in spec.leaves if x.role != "dim"]
    forward_args = leaf_ptrs + [state_pointer("init", state=n) for n in names]
    forward_args += [derived("out", "ptr", user=o) for o in outputs]
    forward_args += [state_pointer("final", state=n) for n in names] + [state_pointer("saved", state=n) for n in names]
    backward_args = leaf_ptrs + [state_pointer("saved", state=n) for n in names]
    backward_args += [derived("grad", "out", "ptr", user=o) for o in outputs]
    backward_args += [state_pointer("grad", "final", state=n) for n in names]
    backward_args += [steps.ptr(x.name, grad=True) for x in spec.leaves if x.role != "dim"]
    backward_args += [state_pointer("grad", "init", state=n) for n in names]

    dims = [
        f"DK = {steps.dim_text(spec.key_dim)}",
        f"DV = {steps.dim_text(spec.value_dim) if spec.value_dim is not None else 1}",
    ]
    prologue = dims + PROLOGUE

    state_loads, final_stores, forward_body = [], [], steps.leaf_loads() + steps.piece_lines()
    final_grad_loads, backward_finals = [], []
    for lines, name in zip(states, names):
        j, vector = lines.j, lines.state.vector
        io, io_mask = lines.offsets("io")
        saved, saved_mask = lines.offsets("saved")
        owner = "mask_k[:, None] & (uu[None, :] + pid_v == 0)" if vector else io_mask  # one value block owns it
        init, final = state_pointer("init", state=name), state_pointer("final", state=name)
        saved_ptr = state_pointer("saved", state=name)
        state_loads.append(f"st{j} = tl.load({init} + {io}, mask={io_mask}, other=0.0).to(COMPUTE)")
        final_stores.append(f"tl.store({final} + {io}, st{j}, mask={owner})")
        forward_body += lines.row_lines()
        forward_body += ["if STORE_STATES:  # the chunk-start state, which backward reads instead of re-running"]
        forward_body += [f"    tl.store({saved_ptr} + {saved}, st{j}, mask={saved_mask})"]
        forward_body += lines.recompute_lines() + lines.advance_lines()
        grad_final, grad_init = state_pointer("grad", "final", state=name), state_pointer("grad", "init", state=name)
        final_grad_loads.append(f"dst{j} = tl.load({grad_final} + {io}, mask={owner}, other=0.0).to(COMPUTE)")
        if vector:  # every value block holds a part of a vector state's cotangent
            backward_finals.append(f"tl.atomic_add({grad_init} + {io}, dst{j}, mask={io_mask})")
        else:
            backward_finals.append(f"tl.store({grad_init} + {io}, dst{j}, mask={io_mask})")
    forward_body += steps.output_lines()
    forward_body += [_output_store(steps, m, name, "") for m, name in enumerate(outputs)]

    backward_body = steps.leaf_loads() + steps.piece_lines()
    output_lines, used = steps.cotangent_lines(steps.outputs())
    reads_needed = set(re.findall(r"\by(\d+)\b", "\n".join(output_lines)))  # the outputs' cotangents read them
    late = {}
    for lines, name in zip(states, names):
        saved, saved_mask = lines.offsets("saved")
        backward_body += lines.row_lines()
        saved_ptr = state_pointer("saved", state=name)
        load = f"st{lines.j} = tl.load({saved_ptr} + {saved}, mask={saved_mask}, other=0.0).to(COMPUTE)"
        if lines.pairs_first(any(str(k) in reads_needed for k, _ in lines.reads)):
            scores, rest = lines.split_recompute()
            backward_body += scores
            late[lines.j] = [load, *rest, *lines.end_lines()]
        else:
            backward_body += [load, *lines.recompute_lines(), *lines.end_lines()]
    backward_body += [_output_store(steps, m, name, "grad") for m, name in enumerate(outputs)]
    core = [line for lines in states for line in lines.backward_lines(late.get(lines.j))]
    piece_lines, piece_used = steps.cotangent_lines(steps.pieces)
    reduction_lines, reduction_used = steps.reduction_cotangents()
    used |= piece_used | reduction_used
    inits = []
    for k, r in enumerate(spec.reads):
        inits.append(f"dy{k} = {'zero_sc' if spec.state(r.state).vector else 'zero_val'}")
    inits += [f"dred{j} = zero_sc" for j in range(len(spec.reductions))]
    inits += [f"{target} = {ZERO[space]}" for target, space in sorted(used) if target.startswith("g_")]
    stores, accumulate, weight_finals = steps.leaf_gradient_lines(used)
    backward_body += inits + output_lines + core + piece_lines + reduction_lines + stores + accumulate
    backward_finals += weight_finals

    text = template("chunked.py.jinja").render(
        cell=spec.cell,
        key=key,
        description=_describe(spec),
        forward_args=forward_args,
        backward_args=backward_args,
        dim_args=list(steps.dim.values()),
        prologue=prologue,
        weight_loads=steps.weight_loads(),
        state_loads=state_loads,
        chunk_prologue=CHUNK_PROLOGUE,
        forward_body=forward_body,
        final_stores=final_stores,
        accumulator_inits=steps.weight_accumulators(used),
        final_grad_loads=final_grad_loads,
        backward_body=backward_body,
        backward_finals=backward_finals,
    )
    return ChunkedModule(text, forward_args, backward_args, spec, steps)


def _output_store(steps: StepLines, m: int, name: str, kind: str) -> str:
    """The store of output m (``kind`` ""), or the load of its cotangent (``kind`` "grad")."""
    out = steps.spec.outputs[m]
    space = out.space
    if space == "scalar":
        offsets = "first + rows"
    else:
        offsets = step_offsets(steps.dim_text(out.shape[0]), "vv" if space == "value" else "kk")
    if kind == "grad":
        grad = derived("grad", "out", "ptr", user=name)
        return f"d_out{m} = tl.load({grad} + {offsets}, mask={MASK[space]}, other=0.0).to(COMPUTE)"
    ptr = derived("out", "ptr", user=name)
    return f"tl.store({ptr} + {offsets}, out{m}.to({ptr}.dtype.element_ty), mask={MASK[space]})"


def _describe(spec: ChunkedSpec) -> list[str]:
    """The stage in words, for the module's docstring."""
    lines = []
    for s in spec.states:
        shape = f"[{spec.key_dim}]" if s.vector else f"[{spec.key_dim}, {spec.value_dim}]"
        factors = ", ".join(
            st.decay + (" with a rank-one correction" if st.correction is not None else "")
            for st in s.steps
            if st.decay != "identity" or st.correction is not None
        )
        lines.append(f"State {s.name} {shape}: transition {factors or 'identity'}; {len(s.writes)} write(s) per step.")
    for r in spec.reads:
        lines.append(f"Read {r.symbol}: the {'new' if r.new else 'previous'} {r.state} along its key axis.")
    lines.append(f"Outputs {', '.join(o.name for o in spec.outputs)}: pointwise in the step values and the reads.")
    return lines
