"""``rnnc inspect``: compile every kernel a cell would launch on a GPU, here, and read what the compiler made.

One training step (forward and backward) is dry-run at the requested shape as on the GPU
profile (:mod:`rnnc.runtime.dry_run`: the tiling model's parameters for that profile, pinned ones
on top), each distinct launch is compiled for the profile's architecture (:mod:`rnnc.cubin`),
and the report lists per kernel the registers, stack (spill) bytes, shared memory and
tensor-core instructions, beside the tiling model's predicted registers and shared memory and
the occupancy that follows. No GPU is needed.

Example (compiles two kernels for sm_90, a few seconds):
    >>> from rnnc.compiler import analyse_source
    >>> plan = analyse_source(open("examples/hgrn.rnn").read())
    >>> report = inspect_cell(plan, "h100", {"B": 8, "T": 2048, "NH": 1, "D": 1024}, "bfloat16")
    >>> [(k.name, k.stack_bytes, k.dots) for k in report.kernels]
    [('forward_kernel', 0, 0), ('backward_kernel', 0, 0)]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rnnc.errors import RnncError

ARCH_NAMES = {"cuda": "sm_{}", "hip": "{}"}


@dataclass
class KernelReport:
    """One compiled kernel: what the launch passed, what the compiler made, what the model predicted."""

    name: str
    params: dict  # constexprs and launch options as launched
    grid: list
    launches: int  # identical launches in one training step (a split head launches once per step)
    registers: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    tensor_core_instructions: int | None = None
    dots: int | None = None  # tt.dot operations in the Triton IR
    predicted: dict = field(default_factory=dict)  # the tiling model's registers per thread, shared memory
    programs_per_sm: int | None = None
    occupancy: float | None = None  # resident warps over the SM's maximum
    cubin: str | None = None
    notes: list = field(default_factory=list)  # why a kernel spills or has no tensor cores, compile errors

    @property
    def ok(self) -> bool:
        """Compiled, no stack, and tensor-core instructions wherever there is a dot."""
        return (
            self.registers is not None
            and self.stack_bytes == 0
            and (not self.dots or bool(self.tensor_core_instructions))
        )


@dataclass
class Inspection:
    """Every kernel of one cell at one shape on one GPU profile."""

    cell: str
    strategy: str
    gpu: str
    arch: str
    dtype: str
    precision: str
    shape: dict
    triton: str
    tiling: dict  # the launch parameters the launchers were given (model, tune or pinned)
    kernels: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # where the launched kernels depart from the tiling

    def to_json(self) -> dict:
        """The report as JSON data (the schema of issue 12, plus the fields above)."""
        return asdict(self)


def inspect_cell(
    plan,
    gpu: str,
    shape: dict,
    dtype: str = "bfloat16",
    *,
    precision: str = "ieee",
    pinned: dict | None = None,
    device_name: str | None = None,
    binaries: Path | None = None,
    transform=None,
) -> Inspection:
    """Compile every kernel ``plan`` launches in one training step at ``shape`` on the profile ``gpu``.

    ``pinned`` launch parameters go on top of the model's (as ``Cell.use_tiling``);
    ``device_name`` uses ``rnnc tune``'s winner measured on a GPU of that name; ``binaries``, a
    path prefix, keeps each compiled binary as ``PREFIX.N-KERNEL.cubin`` (``.hsaco`` on AMD);
    ``transform`` (text -> text) compiles a variant of the generated module instead (calibration
    experiments: what a template change would compile to).
    """
    import triton

    from rnnc.constraints.problem import problem_of
    from rnnc.constraints.profiles import load_profile
    from rnnc.cubin import compile_launch, occupancy, target_of
    from rnnc.runtime.cell import PRECISIONS, _triton_runner
    from rnnc.runtime.dry_run import record_launches

    if precision not in PRECISIONS:
        raise RnncError(f"precision needs one of {', '.join(PRECISIONS)}, has {precision!r}")
    problem_of(plan, shape, dtype)  # the shape and dtype checked first: "needs B, T, NH, D; missing D"
    if _interpreter_imported():  # Triton's own library kernels were built for the interpreter: compile elsewhere
        options = dict(precision=precision, pinned=pinned, device_name=device_name, binaries=binaries)
        return _in_subprocess((plan, gpu, shape, dtype), {**options, "transform": transform})
    profile = load_profile(gpu)
    target = target_of(profile)
    kernels = _triton_runner(plan)
    kernels.precision, kernels.pinned = precision, dict(pinned or {})
    if transform is not None:
        kernels.module = _Variant(kernels.module, transform(kernels.module.text))
    launches = record_launches(kernels, profile, shape, dtype, device_name=device_name)
    tiling = _launcher_params(kernels, shape, dtype, profile)
    report = Inspection(
        cell=plan.ir.cell,
        strategy=plan.strategy,
        gpu=profile.name,
        arch=ARCH_NAMES[target.backend].format(target.arch),
        dtype=dtype,
        precision=precision,
        shape=dict(shape),
        triton=triton.__version__,
        tiling=tiling,
    )
    model = _TilingModel(plan, profile, shape, dtype, tiling)
    for index, launch in enumerate(_most_common(launches)):
        row = KernelReport(launch.name, _jsonable(launch.meta), list(launch.grid), launch.count)
        try:
            compiled = compile_launch(launch, target)
        except Exception as exc:  # noqa: BLE001 - a compiler failure is a finding to report, not a crash
            row.notes.append(f"does not compile for {report.arch}: {type(exc).__name__}: {_first_line(exc)}")
            report.kernels.append(row)
            continue
        row.registers, row.stack_bytes = compiled.registers, compiled.stack_bytes
        row.shared_bytes, row.tensor_core_instructions = compiled.shared_bytes, compiled.tensor_core_instructions
        row.dots = compiled.dots
        warps = launch.meta.get("num_warps", 4)
        row.programs_per_sm, row.occupancy = occupancy(profile, compiled.registers, compiled.shared_bytes, warps)
        row.predicted = model.predict(launch)
        row.notes += _notes(row, profile, compiled)
        if binaries is not None:
            path = Path(f"{binaries}.{index}-{launch.name}{compiled.suffix}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(compiled.binary)
            row.cubin = str(path)
        report.kernels.append(row)
    report.notes = _departures(_model_answer(plan, profile, shape, dtype))
    return report


def _departures(answer) -> list[str]:
    """Where the model's best tiling needs a kernel variant not built yet, and what is launched instead."""
    if answer is None or answer.built is None:
        return []
    params, built = answer.params, answer.built
    wanted = []
    if params.get("STREAM_WEIGHTS"):
        wanted.append(f"the recurrent weights streamed every step in BLOCK_K={params.get('BLOCK_K')} pieces")
    if "BK" in params and params["BK"] != built.get("BK"):
        wanted.append(f"the key dimension in BK={params['BK']} pieces")
    changed = ", ".join(f"{k}={v}" for k, v in built.items() if params.get(k) != v)
    needs = " and ".join(wanted) or "a variant"
    return [
        f"no tiling of the kernels that exist fits the budgets; the best one needs {needs} (not built yet), "
        f"so these kernels launch with the tiling of theirs that spills least ({changed})"
    ]


def _model_answer(plan, profile, shape: dict, dtype: str):
    """The tiling model's answer for the shape (None when it has none)."""
    from rnnc.constraints.tiling import solve_tiling

    try:
        return solve_tiling(plan, profile, shape, dtype, candidates=0, find_binding=False)
    except RnncError:
        return None


def _interpreter_imported() -> bool:
    """Whether triton.language was imported under TRITON_INTERPRET=1: its jit functions (tl.cdiv, ...)
    are then interpreter functions, which no GPU compile can call."""
    import triton.language as tl

    return type(tl.cdiv).__name__ == "InterpretedFunction"


def _in_subprocess(args: tuple, options: dict) -> "Inspection":
    """``inspect_cell`` in a fresh Python with the interpreter off (the same rnnc, the arguments pickled)."""
    import pickle
    import subprocess
    import sys

    import rnnc
    from rnnc import config

    root = str(Path(rnnc.__file__).resolve().parent.parent)  # the child imports this rnnc, not another
    env = config.child_environment(TRITON_INTERPRET="0", PYTHONPATH=root)
    command = [sys.executable, "-c", "from rnnc.inspect import _worker; _worker()"]
    done = subprocess.run(command, input=pickle.dumps((args, options)), capture_output=True, env=env, check=False)
    if done.returncode != 0:
        raise RnncError(f"inspect failed in its compiling process: {done.stderr.decode(errors='replace')[-2000:]}")
    found = pickle.loads(done.stdout)
    if isinstance(found, Exception):
        raise found
    return found


def _worker() -> None:
    """The subprocess side of :func:`_in_subprocess`: arguments in on stdin, the report (or error) out."""
    import pickle
    import sys

    args, options = pickle.loads(sys.stdin.buffer.read())
    try:
        found = inspect_cell(*args, **options)
    except RnncError as exc:
        found = exc
    sys.stdout.buffer.write(pickle.dumps(found))


class _Variant:
    """A rendered module with another text (``inspect_cell``'s ``transform``), otherwise the same."""

    def __init__(self, module, text: str):
        self._module, self.text = module, text

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _launcher_params(kernels, shape: dict, dtype: str, profile) -> dict:
    """What the launchers were given: the model's (or tune's) parameters for the profile, pinned on top."""
    from rnnc.runtime import launch as launch_state
    from rnnc.runtime.arguments import bind
    from rnnc.runtime.dry_run import meta_call

    tensors, states = meta_call(kernels.plan, shape, dtype)
    token = launch_state.set_target(profile)
    try:
        return kernels.model_params(bind(kernels.plan.ir, tensors, states))
    finally:
        launch_state.reset_target(token)


def _most_common(launches) -> list:
    """One launch per kernel and parameters: of launches that differ only in Triton's specialisation
    of a scalar (a split head's step index), the most frequent, counting them all."""
    groups: dict = {}
    for launch in launches:
        key = (launch.name, tuple(sorted((k, repr(v)) for k, v in launch.meta.items())))
        groups.setdefault(key, []).append(launch)
    chosen = []
    for group in groups.values():
        best = max(group, key=lambda launch: launch.count)
        best.count = sum(launch.count for launch in group)
        chosen.append(best)
    return chosen


class _TilingModel:
    """The tiling model's predictions for the parameters a kernel was actually launched with."""

    def __init__(self, plan, profile, shape: dict, dtype: str, tiling: dict):
        from rnnc.constraints.tiling import build_model

        self.plan, self.tiling = plan, tiling
        try:
            self.model = build_model(plan, profile, shape, dtype)
        except RnncError:
            self.model = None

    def predict(self, launch) -> dict:
        from rnnc.constraints.tiling import effective_params

        if self.model is None:
            return {}
        values = effective_params(self.plan.strategy, launch, self.tiling, self.model)
        if values is None:
            return {}
        direction = "backward" if launch.name.startswith("backward") else "forward"
        found = {}
        for key, label in (("registers", "registers per thread"), ("shared_bytes", "shared memory per program")):
            expr = self.model.quantities.get(f"{direction} {label}") or self.model.quantities.get(label)
            if expr is not None:
                found[key] = int(expr.evaluate(values))
        return found


def _notes(row: KernelReport, profile, compiled) -> list[str]:
    notes = []
    if row.stack_bytes:
        predicted = row.predicted.get("registers")
        said = f"; the model predicted {predicted}" if predicted is not None else ""
        notes.append(
            f"spills: {row.stack_bytes} B of stack per thread at {row.registers} registers "
            f"(the {profile.name} allows {profile.registers_per_thread}){said}"
        )
    if row.dots and not row.tensor_core_instructions:
        notes.append(f"{row.dots} tl.dot without tensor-core instructions (float32 'ieee' dots become FMA loops)")
    if row.shared_bytes is not None and row.shared_bytes > profile.shared_memory_per_block_optin:
        notes.append(
            f"needs {row.shared_bytes} B of shared memory, the {profile.name} allows "
            f"{profile.shared_memory_per_block_optin}: the launch would fail"
        )
    if compiled.spilled and any(compiled.spilled.values()):
        notes.append("register spills: " + ", ".join(f"{k} {v}" for k, v in compiled.spilled.items()))
    return notes


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else ""


def _jsonable(meta: dict) -> dict:
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v) for k, v in meta.items()}


def format_table(report: Inspection) -> str:
    """The report as a table, one row per kernel, and its notes below.

    Example:
        >>> r = Inspection("c", "scan", "h100", "sm_90", "bfloat16", "ieee", {"B": 1}, "3.9.0", {})
        >>> r.kernels.append(KernelReport("forward_kernel", {"BLOCK_T": 16}, [1, 1], 1, 40, 0, 0, 0, 0,
        ...                                {"registers": 48, "shared_bytes": 0}, 8, 0.5))
        >>> print(format_table(r))  # doctest: +NORMALIZE_WHITESPACE
        c (scan) on h100 (sm_90), bfloat16, B=1; triton 3.9.0
        kernel          launches  regs  stack  shared  TC instr  dots  model regs  model shared  programs/SM  occupancy
        forward_kernel         1    40      0       0         0     0          48             0            8        50%
        params: forward_kernel: BLOCK_T=16
    """
    shape = ", ".join(f"{k}={v}" for k, v in report.shape.items())
    lines = [
        f"{report.cell} ({report.strategy}) on {report.gpu} ({report.arch}), {report.dtype}, {shape}; "
        f"triton {report.triton}" + ("" if report.precision == "ieee" else f"; precision {report.precision}")
    ]
    headers = [
        "kernel",
        "launches",
        "regs",
        "stack",
        "shared",
        "TC instr",
        "dots",
        "model regs",
        "model shared",
        "programs/SM",
        "occupancy",
    ]
    rows = []
    for k in report.kernels:
        occupancy = "-" if k.occupancy is None else f"{100 * k.occupancy:.0f}%"
        cells = [
            k.name,
            k.launches,
            k.registers,
            k.stack_bytes,
            k.shared_bytes,
            k.tensor_core_instructions,
            k.dots,
            k.predicted.get("registers"),
            k.predicted.get("shared_bytes"),
            k.programs_per_sm,
            occupancy,
        ]
        rows.append(["-" if c is None else str(c) for c in cells])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for k in report.kernels:
        shown = ", ".join(f"{n}={v}" for n, v in k.params.items())
        lines.append(f"params: {k.name}: {shown}")
        lines += [f"note: {k.name}: {n}" for n in k.notes]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


def write_json(report: Inspection, path: Path) -> None:
    """Write the report as deterministic JSON (sorted keys); binaries beside it are named relative to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = report.to_json()
    for kernel in data["kernels"]:
        if kernel["cubin"] and Path(kernel["cubin"]).resolve().parent == path.resolve().parent:
            kernel["cubin"] = Path(kernel["cubin"]).name
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
