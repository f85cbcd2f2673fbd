"""``rnnc demo``: compile the bundled cells, run each on small random data, check it, print a table.

Each cell runs on the best backend here: its Triton kernels on a GPU, else under
Triton's CPU interpreter. The forward outputs, final states and the gradients of
every input, weight and initial state are compared with the float64 reference
backend on the same values; a row fails when the relative error (by norm) passes
the tolerance of the dtype the kernels ran in.

Example:
    >>> [p.name for p in bundled_cells()][:1]
    ['aaren.rnn']
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
# the values some bundled cells are written for (their comments say so): a lower bound or a decay in
# (0, 1), a normaliser that starts positive; every other tensor is spread * randn
DOMAINS = {
    "hgrn2": {"lb": "unit"},
    "kda": {"alpha": "unit", "beta": "unit"},
    "energy_norm": {"g": "log decay", "e": "positive"},
}
NAME_WIDTH = 28  # the longest bundled cell name, linear_attention_normalised, and a space


def bundled_cells() -> list[Path]:
    """The zoo shipped with rnnc (``rnnc/zoo/*.rnn``), sorted by name.

    Example:
        >>> "lstm.rnn" in [p.name for p in bundled_cells()]
        True
    """
    folder = Path(str(resources.files("rnnc").joinpath("zoo")))
    return sorted(folder.glob("*.rnn"))


@dataclass
class DemoRow:
    """One cell's result: ``status`` is ``ok``, ``MISMATCH``, ``reference only`` (no Triton kernel
    covers the cell yet; ``note`` says why) or ``ERROR`` (an exception, ``note`` says which)."""

    cell: str
    strategy: str
    backend: str
    forward_error: float | None
    backward_error: float | None
    seconds: float
    status: str
    note: str = ""


def _relative(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _random_tensors(cell, device, dtype, generator, B=2, T=8, NH=1, size=16, dims=None, spread=0.5):
    """Inputs, weights (matrices at 1/sqrt(fan-in), as torch.nn initialises them) and initial states.

    Every dim is ``size`` unless ``dims`` names it; inputs, vectors and states are ``spread * randn``, mapped
    into the domain ``DOMAINS`` gives for the cell's tensor (``unit``: a sigmoid of it)."""
    import sympy
    import torch

    ir = cell.plan.ir
    subs = {sympy.Symbol(d, positive=True, integer=True): (dims or {}).get(d, size) for d in ir.dims}

    domains = DOMAINS.get(ir.cell, {})

    def make(lead, decl):
        shape = [*lead, *(int(sympy.sympify(s).subs(subs)) for s in decl.shape)]
        scale = spread if decl.kind != "weight" or len(decl.shape) < 2 else 1.0 / shape[-1] ** 0.5
        x = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
        x = {
            "unit": torch.sigmoid,
            "positive": lambda y: torch.nn.functional.softplus(y) + 0.5,
            "log decay": lambda y: -torch.nn.functional.softplus(y),
        }.get(domains.get(decl.name), lambda y: y)(x)
        return x.to(device=device, dtype=dtype).requires_grad_()

    tensors = {d.name: make((B, T, NH), d) for d in ir.inputs}
    tensors.update({d.name: make((NH,), d) for d in ir.weights})
    states = {d.name: make((B, NH), d) for d in ir.states}
    return tensors, states


def check_cell(
    path: Path, device: str, dtype_name: str = "float32", seed: int = 0, tiling: dict | None = None, size: int = 16
) -> DemoRow:
    """Run one cell on Triton and on the float64 reference; compare outputs, states and gradients.

    ``tiling`` pins launch parameters (``{"SPLIT": 4}`` splits each sequential head over four
    programs); ``size`` is every dim's size."""
    import torch

    import rnnc

    start = time.perf_counter()
    reference = rnnc.compile(str(path), backend="reference")
    name, strategy = reference.name, reference.strategy
    try:
        kernels = rnnc.compile(str(path), backend="triton")
    except rnnc.BackendError as exc:
        reason = str(exc).splitlines()[0]
        return DemoRow(name, strategy, "reference", None, None, time.perf_counter() - start, "reference only", reason)
    except Exception as exc:  # a template that renders a module which does not import: rnnc's bug, not the cell's
        note = f"internal error generating the Triton kernels: {type(exc).__name__}: {exc}"
        return DemoRow(name, strategy, "?", None, None, time.perf_counter() - start, "ERROR", note)
    if tiling:
        kernels.use_tiling(tiling)
    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(seed)
    tensors, states = _random_tensors(kernels, device, dtype, generator, size=size)
    ours = kernels(state=states, **tensors)
    wide = {k: v.detach().double().cpu().requires_grad_() for k, v in {**tensors, **states}.items()}
    theirs = reference(state={k: wide[k] for k in states}, **{k: wide[k] for k in tensors})
    pairs = [(ours.outputs[k], theirs.outputs[k]) for k in ours.outputs]
    pairs += [(ours.state[k], theirs.state[k]) for k in ours.state]
    forward = max(_relative(a, b) for a, b in pairs)
    cotangents = [torch.randn(b.shape, generator=generator, dtype=torch.float64) for _, b in pairs]
    mine = torch.autograd.grad(
        [a for a, _ in pairs], [*tensors.values(), *states.values()], [c.to(device, dtype) for c in cotangents]
    )
    truth = torch.autograd.grad([b for _, b in pairs], list(wide.values()), cotangents)
    backward = max(_relative(a, b) for a, b in zip(mine, truth))
    tolerance = TOLERANCE.get(dtype_name, 1e-2)
    status = "ok" if max(forward, backward) < tolerance else "MISMATCH"
    return DemoRow(name, strategy, kernels.last_backend, forward, backward, time.perf_counter() - start, status)


def _format(row: DemoRow) -> str:
    def err(x):
        return "-" if x is None else f"{x:.1e}"

    text = (
        f"{row.cell:<{NAME_WIDTH}} {row.strategy:<11} {row.backend:<10} {err(row.forward_error):>9} "
        f"{err(row.backward_error):>9} {row.seconds:>7.1f}  {row.status}"
    )
    if row.status == "reference only":
        return f"{text}: {row.note}"
    return text + (f"  ({row.note})" if row.note else "")


def run_demo(files: list[Path] | None = None, out: TextIO | None = None, dtype_name: str = "float32") -> int:
    """Check every cell and print the table; returns 0 when all cells with kernels match, else 1."""
    import sys

    import torch

    from rnnc import config

    out = out or sys.stdout
    files = files or bundled_cells()
    if torch.cuda.is_available() and not config.triton_interpret():
        device, where = "cuda", torch.cuda.get_device_name()
    else:
        device, where = "cpu", "Triton's CPU interpreter (no GPU here)"
        config.use_triton_interpreter()
    print(f"rnnc demo: {len(files)} cells, {dtype_name}, on {where}; reference: float64 PyTorch loop", file=out)
    header = f"{'cell':<{NAME_WIDTH}} {'strategy':<11} {'backend':<10} {'fwd err':>9} {'grad err':>9} {'seconds':>7}"
    header += "  status"
    print(header, file=out)
    print("-" * len(header), file=out, flush=True)
    failed, rows = 0, []
    for path in files:
        try:
            row = check_cell(Path(path), device, dtype_name)
        except Exception as exc:  # a demo reports every cell, whatever one of them does
            row = DemoRow(Path(path).stem, "?", "?", None, None, 0.0, "ERROR", f"{type(exc).__name__}: {exc}")
        failed += row.status in ("MISMATCH", "ERROR")
        rows.append(row)
        print(_format(row), file=out, flush=True)
    tolerance = TOLERANCE.get(dtype_name, 1e-2)
    reference_only = sum(1 for row in rows if row.status == "reference only")
    verdict = "all cells with kernels match" if not failed else f"{failed} cell(s) failed"
    if reference_only:
        verdict += f"; {reference_only} cell(s) run on the reference only, no Triton kernel covers them yet"
    print(f"relative errors by norm against float64, tolerance {tolerance:g}: {verdict}", file=out)
    return 1 if failed else 0
