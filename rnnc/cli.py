"""The ``rnnc`` command line: ``check``, ``explain``, ``build``, ``tune`` (needs a CUDA GPU), ``inspect`` and ``demo``.

Example:
    >>> main(["check", "examples/hgrn.rnn"])
    examples/hgrn.rnn: ok: cell hgrn (scan)
    0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnc.errors import RnncError


def _parser() -> argparse.ArgumentParser:
    from rnnc import __version__

    parser = argparse.ArgumentParser(prog="rnnc", description="Compile recurrent cells to fast kernels.")
    parser.add_argument("--version", action="version", version=f"rnnc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = commands.add_parser("check", help="parse and analyse .rnn files; exit 1 on any error")
    check.add_argument("files", nargs="+", metavar="FILE.rnn")
    explain = commands.add_parser("explain", help="print what the compiler concluded about a cell")
    explain.add_argument("file", metavar="FILE.rnn")
    explain.add_argument("--cell", default=None, help="the cell to explain (default: every cell of the file)")
    explain.add_argument(
        "--gpu", default=None, help="a GPU profile (h100, a100, l4, ..., auto): also explain the tiling"
    )
    explain.add_argument("--shape", default=None, help="the call shape for --gpu, e.g. B=16,T=1024,NH=12,H=64")
    explain.add_argument("--dtype", default="bfloat16", help="input and weight dtype for --gpu (default bfloat16)")
    build = commands.add_parser("build", help="write the generated Triton modules of the cells to a folder")
    build.add_argument("files", nargs="+", metavar="FILE.rnn")
    build.add_argument("-o", "--output", required=True, metavar="DIR", help="the folder to write CELL.py files to")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if DIR is stale or edited")
    tune = commands.add_parser("tune", help="time the tiling solver's best candidates on this GPU, cache the winner")
    tune.add_argument("file", metavar="FILE.rnn")
    tune.add_argument("--shape", required=True, help="the call shape, e.g. B=16,T=1024,NH=12,H=64")
    tune.add_argument("--cell", default=None, help="the cell to tune (default: the file's only cell)")
    tune.add_argument("--gpu", default="auto", help="the profile candidates come from (default auto: this GPU)")
    tune.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32", "float64"))
    tune.add_argument("--top", type=int, default=8, help="how many of the solver's best tilings to time (default 8)")
    inspect = commands.add_parser(
        "inspect", help="compile every kernel of a cell for a GPU's architecture here (no GPU needed) and report"
    )
    inspect.add_argument("file", metavar="FILE.rnn")
    inspect.add_argument("--cell", default=None, help="the cell to inspect (default: the file's only cell)")
    inspect.add_argument("--gpu", required=True, help="a GPU profile: h100, h200, a100, l4, l40s, rtx4090, mi300x")
    inspect.add_argument("--shape", required=True, help="the call shape, e.g. B=16,T=1024,NH=12,H=64")
    inspect.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32", "float64"))
    inspect.add_argument("--precision", default="ieee", choices=("ieee", "tf32"), help="float32 dots (default ieee)")
    inspect.add_argument("--pin", default=None, help="launch parameters over the model's, e.g. BLOCK_B=32,num_warps=8")
    inspect.add_argument("--tuned-on", default=None, metavar="GPU NAME", help="use rnnc tune's winner from this GPU")
    inspect.add_argument("--json", default=None, metavar="OUT.json", help="write the report; binaries go beside it")
    inspect.add_argument(
        "--check", action="store_true", help="exit 1 unless every kernel has no stack and tensor cores for its dots"
    )
    demo = commands.add_parser("demo", help="run the bundled cells on small data on this machine and check them")
    demo.add_argument("files", nargs="*", metavar="FILE.rnn", help="cells to run (default: the bundled zoo)")
    demo.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="default float32")
    return parser


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RnncError(f"{path}: error: cannot read: {exc.strerror or exc}") from None


def _cells(path: str, name: str | None = None):
    """Parse a file and yield the Plan of each of its cells (or just ``name``)."""
    from rnnc.compiler import analyse, lower, pick_cell
    from rnnc.grammar import parse

    program = parse(_read(path), path)
    cells = [pick_cell(program, name)] if name else list(program.cells)
    if not cells:
        raise RnncError(f"{path}: error: needs at least one 'cell NAME(DIMS) {{ ... }}', has none")
    pick_cell(program, cells[0].name)  # checks that cell names are unique
    for cell in cells:
        yield analyse(lower(cell))


def _check(files: list[str]) -> int:
    failed = 0
    for path in files:
        try:
            plans = list(_cells(path))
        except RnncError as exc:
            print(exc, file=sys.stderr)
            failed += 1
            continue
        summary = ", ".join(f"cell {p.ir.cell} ({p.strategy})" for p in plans)
        print(f"{path}: ok: {summary}")
    return 1 if failed else 0


def _parse_shape(text: str | None, option: str = "--shape") -> dict[str, int]:
    if not text:
        raise RnncError("error: --gpu needs --shape, e.g. --shape B=16,T=1024,NH=12,H=64")
    shape = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip().isdigit():
            raise RnncError(f"error: {option} needs NAME=INTEGER items separated by commas, has {item!r}")
        shape[name.strip()] = int(value)
    return shape


def _explain(path: str, cell: str | None, gpu: str | None, shape: str | None, dtype: str) -> int:
    plans = list(_cells(path, cell))
    texts = []
    for plan in plans:
        text = plan.explain()
        if gpu is not None:
            from rnnc.constraints.tiling import solve_tiling

            text += "\n" + solve_tiling(plan, gpu, _parse_shape(shape), dtype).explain()
        texts.append(text)
    print("\n\n".join(texts))
    return 0


def _build(files: list[str], output: str, check: bool) -> int:
    """Write (or, with check, compare) one deterministic module per cell."""
    from rnnc.runtime.cell import triton_source

    folder = Path(output)
    problems = 0
    for path in files:
        for plan in _cells(path):
            target = folder / f"{plan.ir.cell}.py"
            try:
                text = triton_source(plan)
            except RnncError as exc:
                print(f"{path}: error: cell {plan.ir.cell}: {exc}", file=sys.stderr)
                problems += 1
                continue
            if check:
                current = target.read_text() if target.exists() else None
                if current != text:
                    state = "missing" if current is None else "stale or edited"
                    print(f"{target}: {state}: regenerate with rnnc build", file=sys.stderr)
                    problems += 1
                else:
                    print(f"{target}: up to date")
                continue
            folder.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"{target}: written ({plan.strategy})")
    return 1 if problems else 0


def _tune(args) -> int:
    """``rnnc tune``: refuse at once without a GPU, else time, cache and print the table."""
    from rnnc.tune import format_result, gpu_problem, tune

    problem = gpu_problem()
    if problem is not None:
        raise RnncError(f"error: rnnc tune needs a CUDA GPU to time kernels on, and found none: {problem}")
    shape = _parse_shape(args.shape)
    result = tune(args.file, shape, cell_name=args.cell, gpu=args.gpu, dtype=args.dtype, top=args.top)
    print(format_result(result))
    return 0


def _inspect(args) -> int:
    """``rnnc inspect``: dry-run one training step, compile each kernel for the profile, print the table."""
    from rnnc.inspect import format_table, inspect_cell, write_json

    plans = list(_cells(args.file, args.cell))
    if len(plans) > 1:
        names = ", ".join(p.ir.cell for p in plans)
        raise RnncError(f"error: {args.file} has cells {names}; inspect needs one: pass --cell NAME")
    pinned = _parse_shape(args.pin, "--pin") if args.pin else None
    out = Path(args.json) if args.json else None
    report = inspect_cell(
        plans[0],
        args.gpu,
        _parse_shape(args.shape),
        args.dtype,
        precision=args.precision,
        pinned=pinned,
        device_name=args.tuned_on,
        binaries=out.with_suffix("") if out else None,
    )
    print(format_table(report))
    if out is not None:
        write_json(report, out)
        print(f"{out}: written")
    return 1 if args.check and not all(k.ok for k in report.kernels) else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Example:
        >>> main(["explain", "examples/hgrn.rnn"]) == 0  # doctest: +ELLIPSIS
        cell hgrn(D): strategy scan
        ...
        True
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.files)
        if args.command == "build":
            return _build(args.files, args.output, args.check)
        if args.command == "tune":
            return _tune(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "demo":
            from rnnc.demo import run_demo

            return run_demo([Path(f) for f in args.files] or None, dtype_name=args.dtype)
        return _explain(args.file, args.cell, args.gpu, args.shape, args.dtype)
    except RnncError as exc:
        text = str(exc)
        print(text if "error:" in text.splitlines()[0] else f"error: {text}", file=sys.stderr)
        return 1
    except RecursionError:
        print("rnnc: error: the input is nested too deeply to analyse", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug in rnnc must not show a traceback to the user
        print(f"rnnc: internal error: {type(exc).__name__}: {exc} (please report this)", file=sys.stderr)
        return 2


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
