"""``rnnc tune``: time the tiling solver's best candidates on this GPU and cache the fastest.

For one cell, shape and dtype, the solver's best tiling and its runners-up (``Tiling.candidates``)
are each pinned on the cell's Triton kernels (``Cell.use_tiling``), run once (compiling them and
checking their outputs and gradients against the first candidate that ran), and timed forward
plus backward with ``triton.testing.do_bench`` (median of warm runs). The fastest is written to
the tuning cache (:mod:`rnnc.tuning_cache`), where the runtime finds it for every later call of
the same GPU, cell, kernels, dtype and shape bucket. The entry also records the winner's rank in
the model's order and how much slower the model's first choice was.

The timer is a parameter, so that candidate selection and caching can be checked without a GPU.

Example (a fake timer that prefers long time blocks; nothing runs):
    >>> result = tune("examples/hgrn.rnn", {"B": 2, "T": 64, "NH": 1, "D": 16}, gpu="h100", dtype="float32",
    ...               top=3, timer=lambda fn, params: 100.0 / params["BLOCK_T"], device="cpu",
    ...               device_name="Doctest GPU", check=False)
    >>> result.winner.params["BLOCK_T"] == max(row.params["BLOCK_T"] for row in result.rows)
    True
"""

from __future__ import annotations

import datetime
from dataclasses import asdict, dataclass
from typing import Callable

from rnnc import tuning_cache
from rnnc.errors import RnncError

# fn runs forward + backward once; params are the pinned launch parameters; returns microseconds
Timer = Callable[[Callable[[], object], dict], float]
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}  # 16-bit dtypes: 2e-2 (outputs are rounded to 8 bits)


@dataclass
class Row:
    """One candidate: its rank in the model's order, parameters, estimate, measured time and status."""

    rank: int
    params: dict
    estimate_us: float
    measured_us: float | None = None
    status: str = "ok"  # "ok", "failed: ...", "wrong: ..."


@dataclass
class TuneResult:
    """What ``tune`` measured and stored."""

    cell: str
    gpu: str
    profile: str
    dtype: str
    shape: dict
    rows: list
    winner: Row
    first_over_best: float | None  # the model's first choice's time over the winner's
    path: str  # the tuning-cache entry

    @property
    def winner_rank(self) -> int:
        """0 when the model's first choice was the fastest."""
        return self.winner.rank


def gpu_problem() -> str | None:
    """Why kernels cannot be timed on a GPU here, or None when they can.

    Example:
        >>> isinstance(gpu_problem(), (str, type(None)))
        True
    """
    import torch

    from rnnc import config

    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    if config.triton_interpret():
        return "TRITON_INTERPRET=1 is set: kernels would run in the CPU interpreter, whose times say nothing"
    return None


def do_bench_timer(fn: Callable[[], object], params: dict) -> float:
    """The default timer: ``triton.testing.do_bench``'s median of warm runs, in microseconds.

    Example:
        >>> callable(do_bench_timer)
        True
    """
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median")) * 1000.0


def tune(
    src,
    shape: dict,
    *,
    cell_name: str | None = None,
    gpu: str = "auto",
    dtype: str = "bfloat16",
    top: int = 8,
    timer: Timer | None = None,
    device: str = "cuda",
    device_name: str | None = None,
    check: bool = True,
) -> TuneResult:
    """Time the solver's ``top`` best tilings of a cell at ``shape`` and cache the fastest.

    ``gpu`` is the profile the candidates come from (``auto``: the live device). ``timer``
    defaults to :func:`do_bench_timer` and then needs a CUDA GPU; ``device_name`` (what the entry
    is filed under) defaults to the live GPU's name. With ``check`` each candidate runs once
    before timing and must agree with the first candidate that ran.

    Example:
        >>> tune("examples/hgrn.rnn", {"B": 2, "T": 8}, gpu="h100", timer=lambda fn, p: 1.0, device="cpu",
        ...      device_name="Doctest GPU")
        Traceback (most recent call last):
        ...
        rnnc.errors.RnncError: rnnc tune needs the shape of B, T, NH, D; has B, T
    """
    import torch

    import rnnc
    from rnnc.constraints.tiling import solve_tiling
    from rnnc.demo import _random_tensors

    if timer is None:
        problem = gpu_problem()
        if problem is not None:
            raise RnncError(f"rnnc tune needs a CUDA GPU to time kernels on, and found none: {problem}")
        timer = do_bench_timer
    if top < 1:
        raise RnncError(f"rnnc tune needs --top of at least 1, has {top}")
    cell = rnnc.compile(src, name=cell_name, backend="triton")
    plan = cell.plan
    needed = ["B", "T", "NH", *plan.ir.dims]
    if sorted(shape) != sorted(needed):
        raise RnncError(f"rnnc tune needs the shape of {', '.join(needed)}; has {', '.join(shape)}")
    shape = {k: int(shape[k]) for k in needed}
    if device_name is None:
        if not str(device).startswith("cuda"):
            raise RnncError(f"rnnc tune needs device_name (what the entry is filed under) off a GPU; has {device!r}")
        device_name = torch.cuda.get_device_name(device)
    tiling = solve_tiling(plan, gpu, shape, dtype, candidates=top - 1, find_binding=False)
    rows = [Row(0, dict(tiling.params), tiling.estimate_us)]
    rows += [Row(i + 1, dict(p), e) for i, (p, e) in enumerate(tiling.candidates[: top - 1])]
    run = _runner(cell, shape, device, getattr(torch, dtype), _random_tensors)
    first, first_rank = None, None  # (outputs, grads) of the first candidate that ran, for the check
    for row in rows:
        cell.use_tiling(row.params)
        try:
            if check:
                got = run()
                if first is None:
                    first, first_rank = got, row.rank
                error = _disagreement(got, first)
                if error > TOLERANCE.get(dtype, 2e-2):
                    row.status = f"wrong: differs from rank {first_rank} by {error:.1e}"
                    continue
            row.measured_us = float(timer(run, dict(row.params)))
        except Exception as exc:  # noqa: BLE001 - a candidate that does not run is recorded, not fatal
            row.status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        finally:
            cell.use_tiling(None)
    timed = [r for r in rows if r.status == "ok" and r.measured_us is not None]
    if not timed:
        reasons = "; ".join(f"rank {r.rank}: {r.status}" for r in rows)
        raise RnncError(f"rnnc tune needs at least one candidate that runs, has none: {reasons}")
    best = min(timed, key=lambda r: r.measured_us)
    ratio = rows[0].measured_us / best.measured_us if rows[0] in timed else None
    key = tuning_cache.TuningKey.of(device_name, plan.ir.cell, plan.key(), cell.source, dtype, shape)
    path = tuning_cache.write(key, _entry(tiling.gpu, shape, rows, best, ratio))
    return TuneResult(plan.ir.cell, device_name, tiling.gpu, dtype, shape, rows, best, ratio, str(path))


def _runner(cell, shape: dict, device: str, dtype, random_tensors) -> Callable[[], tuple]:
    """A closure that runs forward + backward once on fixed random data; returns outputs and gradients."""
    import torch

    dims = {k: v for k, v in shape.items() if k not in ("B", "T", "NH")}
    generator = torch.Generator().manual_seed(0)
    tensors, states = random_tensors(
        cell, device, dtype, generator, B=shape["B"], T=shape["T"], NH=shape["NH"], dims=dims, spread=0.1
    )
    leaves = [*tensors.values(), *states.values()]

    def run():
        out = cell(state=states, **tensors)
        results = [*out.outputs.values(), *out.state.values()]
        grads = torch.autograd.grad(results, leaves, [torch.ones_like(r) for r in results], allow_unused=True)
        return results, grads

    return run


def _disagreement(got, reference) -> float:
    """The largest relative error (by norm) between two runs' outputs and gradients; 0 where not finite."""
    worst = 0.0
    for a, b in zip([*got[0], *got[1]], [*reference[0], *reference[1]]):
        if a is None or b is None:
            continue
        a, b = a.detach().double(), b.detach().double()
        if not (a.isfinite().all() and b.isfinite().all()):
            continue  # random data that overflowed says nothing about the tiling
        worst = max(worst, float((a - b).norm() / b.norm().clamp_min(1e-30)))
    return worst


def _entry(profile: str, shape: dict, rows: list, best: Row, ratio: float | None) -> dict:
    import torch
    import triton

    import rnnc

    return {
        "params": best.params,
        "measured_us": best.measured_us,
        "estimate_us": best.estimate_us,
        "winner_rank": best.rank,
        "first_over_best": ratio,
        "profile": profile,
        "shape": shape,
        "candidates": [asdict(r) for r in rows],
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"rnnc": rnnc.__version__, "torch": torch.__version__, "triton": triton.__version__},
    }


def format_result(result: TuneResult) -> str:
    """The table ``rnnc tune`` prints: one row per candidate, then the winner and how the model did.

    Example:
        >>> row = Row(0, {"BLOCK_T": 64}, 10.0, 12.0)
        >>> text = format_result(TuneResult("hgrn", "G", "h100", "float32", {"T": 8}, [row], row, 1.0, "x.json"))
        >>> "the model's first choice was the fastest" in text
        True
    """
    shape = ", ".join(f"{k}={v}" for k, v in result.shape.items())
    lines = [f"rnnc tune: {result.cell} on {result.gpu} ({result.profile} profile), {result.dtype}, {shape}"]
    lines.append(f"{'rank':>4}  {'estimate_us':>11}  {'measured_us':>11}  status  params")
    for row in result.rows:
        measured = f"{row.measured_us:11.1f}" if row.measured_us is not None else f"{'-':>11}"
        params = ", ".join(f"{k}={v}" for k, v in row.params.items())
        lines.append(f"{row.rank:>4}  {row.estimate_us:11.1f}  {measured}  {row.status}  {params}")
    best = result.winner
    if best.rank == 0:
        lines.append(f"winner: rank 0 at {best.measured_us:.1f} us: the model's first choice was the fastest")
    elif result.first_over_best is None:
        lines.append(f"winner: rank {best.rank} at {best.measured_us:.1f} us; the model's first choice did not run")
    else:
        lines.append(
            f"winner: rank {best.rank} at {best.measured_us:.1f} us; the model's first choice took "
            f"{result.first_over_best:.2f}x as long"
        )
    lines.append(f"cached in {result.path}")
    summary = tuning_cache.summarize(tuning_cache.entries(result.gpu))
    if summary["entries"]:
        lines.append(
            f"over {summary['entries']} tuned entries on {result.gpu}, the model's first choice was the fastest in "
            f"{summary['first_was_best']}; first/best median {summary['median_first_over_best']}, "
            f"worst {summary['worst_first_over_best']}"
        )
    return "\n".join(lines)
