"""Run the T = 65,536 long-sequence check of one cell under Triton's CPU interpreter, however long it takes.

The test suite (tests/test_long_sequence.py) skips cells whose interpreter run would take minutes;
this script runs the same inputs, kernels and float64 loops once and writes the raw result:

    TRITON_INTERPRET=1 python bench/long_sequence_interpreter.py slstm bench/results/long-sequence-slstm-cpu.json
"""

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]

import torch  # noqa: E402
import triton  # noqa: E402
from cells import rel_err  # noqa: E402
from interpreter_scan import fast_scan  # noqa: E402
from test_long_sequence import LOOPS, TOLERANCE, T, _float64_loop, _inputs  # noqa: E402

import rnnc  # noqa: E402


def main(cell: str, out: str, seed: int = 1) -> None:
    assert cell in LOOPS, f"needs one of {sorted(LOOPS)}, has {cell!r}"
    kernels = rnnc.compile(f"examples/{cell}.rnn", backend="triton")
    args, state = _inputs(cell, T, torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    with fast_scan(), torch.no_grad():
        ours = kernels(state={k: v.float() for k, v in state.items()}, **{k: v.float() for k, v in args.items()})
    seconds = time.perf_counter() - start
    outputs, finals = _float64_loop(cell, args, state)
    errors = {f"output {k}": rel_err(v, outputs[k]) for k, v in ours.outputs.items()}
    errors.update({f"final {k}": rel_err(v, finals[k]) for k, v in ours.state.items()})
    finite = all(bool(torch.isfinite(v).all()) for v in [*ours.outputs.values(), *ours.state.values()])
    result = {
        "cell": cell,
        "T": T,
        "seed": seed,
        "dtype": "float32",
        "backend": kernels.last_backend,
        "device": "cpu (TRITON_INTERPRET=1)",
        "machine": platform.processor() or platform.machine(),
        "versions": {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version()},
        "seconds": round(seconds, 1),
        "finite": finite,
        "relative_errors": {k: float(v) for k, v in errors.items()},
        "tolerance": TOLERANCE[cell],
        "passed": finite and all(v < TOLERANCE[cell] for v in errors.values()),
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
