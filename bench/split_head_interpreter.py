"""Check a sequential cell with its heads split over programs, at a width too slow for the suite.

Runs the cell on Triton (split with ``Cell.use_tiling``) and on the float64 reference backend on
the same fresh random values, and prints the relative errors of the outputs and of the gradients
of every input, weight and initial state (optionally writing them as JSON):

    TRITON_INTERPRET=1 python bench/split_head_interpreter.py lstm --width 1024 --split 64 --T 2
    python bench/split_head_interpreter.py slstm --width 96 --split 4 --T 3 --out split.json   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import torch  # noqa: E402
from cells import all_gradients, random_call, rel_err  # noqa: E402

import rnnc  # noqa: E402
from rnnc.runtime.arguments import bind  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cell", help="a sequential zoo cell: lstm, gru, slstm, elman, lti")
    p.add_argument("--width", type=int, default=1024, help="every dim's size")
    p.add_argument("--split", type=int, default=64, help="programs per head")
    p.add_argument("--B", type=int, default=2)
    p.add_argument("--T", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not rnnc.config.triton_interpret() else "cpu"
    dtype = getattr(torch, args.dtype)
    triton_cell = rnnc.compile(ROOT / "examples" / f"{args.cell}.rnn", backend="triton")
    reference = rnnc.compile(ROOT / "examples" / f"{args.cell}.rnn", backend="reference")
    triton_cell.use_tiling({"SPLIT": args.split})
    ir = triton_cell.plan.ir
    dims = {d: args.width for d in ir.dims}
    positive = ("n",) if args.cell == "slstm" else ()  # sLSTM keeps its normaliser positive
    tensors, states = random_call(ir, B=args.B, T=args.T, NH=1, dims=dims, dtype=dtype, positive=positive)
    for decl in ir.weights:  # matrices at torch.nn's scale, 1/sqrt(fan-in)
        if len(decl.shape) >= 2:
            tensors[decl.name] = (tensors[decl.name].detach() * 2 / args.width**0.5).requires_grad_()
    ours_in = {k: v.detach().to(device).requires_grad_() for k, v in {**tensors, **states}.items()}
    wide = {k: v.detach().double().requires_grad_() for k, v in {**tensors, **states}.items()}
    start = time.perf_counter()
    ours = triton_cell(state={k: ours_in[k] for k in states}, **{k: ours_in[k] for k in tensors})
    mine = all_gradients(ours.outputs, ours.state, list(ours_in.values()), seed=1)
    seconds = time.perf_counter() - start
    theirs = reference(state={k: wide[k] for k in states}, **{k: wide[k] for k in tensors})
    truth = all_gradients(theirs.outputs, theirs.state, list(wide.values()), seed=1)
    errors = {f"output {k}": rel_err(v.cpu(), theirs.outputs[k]) for k, v in ours.outputs.items()}
    errors |= {f"final {k}": rel_err(v.cpu(), theirs.state[k]) for k, v in ours.state.items()}
    errors |= {f"grad {k}": rel_err(a.cpu(), b) for k, a, b in zip(ours_in, mine, truth)}
    tiles = triton_cell._triton.tiles(bind(ir, {k: ours_in[k] for k in tensors}, None))
    result = {
        "cell": args.cell,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter)",
        "versions": {"torch": torch.__version__, "rnnc": rnnc.__version__},
        "shape": {"B": args.B, "T": args.T, "NH": 1, **dims},
        "dtype": args.dtype,
        "tiles": tiles,
        "seconds_forward_backward": round(seconds, 3),
        "relative_errors": errors,
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
