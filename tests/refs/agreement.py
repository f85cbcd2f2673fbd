"""Measure how closely the paper oracles agree with their cross-checks and with rnnc's reference.

Run from the repository root: ``python tests/refs/agreement.py [--seeds 5] [--T 37]``. For each pair
it prints the worst relative error (by norm) over the seeds, separately for the forward values
(outputs and final states) and for the gradients of a random linear functional of them with respect
to every leaf. Nothing here is a test: the tests assert the tolerances, this reports the numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]

from refs import paper_data, paper_loops, paper_loops_vector, paper_third_party  # noqa: E402
from refs.check import functional_grads, functional_weights, rel_err  # noqa: E402

LOOPS = {**paper_loops.LOOPS, **paper_loops_vector.LOOPS}


def errors(ours, theirs, leaves: dict, seed: int) -> tuple[float, float]:
    """(worst forward error, worst gradient error) between two ``(outputs, finals)`` results."""
    (out_a, fin_a), (out_b, fin_b) = ours, theirs
    forward = max(rel_err(a[k], b[k]) for a, b in ((out_a, out_b), (fin_a, fin_b)) for k in a)
    weights = functional_weights(out_a, fin_a, seed)
    ga, gb = functional_grads(out_a, fin_a, leaves, weights), functional_grads(out_b, fin_b, leaves, weights)
    return forward, max(rel_err(ga[k], gb[k]) for k in ga)


def measure(cell: str, other, seeds: int, T: int) -> tuple[float, float]:
    worst = (0.0, 0.0)
    for seed in range(seeds):
        args, state = paper_data.make(cell, B=2, T=T, NH=2, seed=seed)
        leaves = {**args, **{f"{k}0": v for k, v in state.items()}}
        result = errors(LOOPS[cell](**leaves), other(**leaves), leaves, seed + 1)
        worst = (max(worst[0], result[0]), max(worst[1], result[1]))
    return worst


def reference_backend(cell: str, backend: str):
    import rnnc

    compiled = rnnc.compile(str(HERE.parent.parent / "examples" / f"{cell}.rnn"), backend=backend)

    def run(**leaves):
        names = paper_data.SPECS[cell]
        args = {k: leaves[k] for k in (*names.inputs, *names.weights)}
        out = compiled(state={k: leaves[f"{k}0"] for k in names.states}, **args)
        return out.outputs, out.state

    run.__name__ = f"rnnc {backend}"
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--T", type=int, default=37)
    parser.add_argument("--rnnc", action="store_true", help="also rnnc's reference backend against every oracle")
    args = parser.parse_args()
    pairs = [(c, f, "fla naive (float32)") for c, f in sorted(paper_third_party.FLA.items())]
    pairs += [(c, f, "torch.nn.RNN") for c, f in sorted(paper_third_party.FLOAT64.items())]
    pairs += [(c, f, "FlashRNN vanilla") for c, f in sorted(paper_third_party.FLASHRNN.items())]
    if args.rnnc:
        for backend in ("reference", "reference-bptt"):
            pairs += [(c, reference_backend(c, backend), f"rnnc {backend}") for c in sorted(LOOPS)]
    print(f"worst relative error over {args.seeds} seeds, T = {args.T}, B = 2, NH = 2, default dims")
    print(f"{'cell':30s} {'against':24s} {'forward':>9s} {'gradients':>9s}")
    for cell, other, name in pairs:
        forward, grads = measure(cell, other, args.seeds, 16 if "FlashRNN" in name else args.T)
        print(f"{cell:30s} {name:24s} {forward:9.1e} {grads:9.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
