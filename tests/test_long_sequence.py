"""Long sequences: at T = 65,536 steps the Triton kernels stay finite and agree with float64.

One batch row, one head, head dims of 4 to 8, float32 kernels, inputs in the ranges the
cells are trained in (log decays from logsigmoid, DeltaNet keys L2-normalised and beta from
a sigmoid, Mamba's dt positive and small with A negative, sLSTM with a forget-gate bias), so
that every recurrence is stable and what could go wrong is the kernels' numerics: overflow
in a chunk's cumulative decays, error that grows with the number of chunks, a carry lost
between chunks.

The float64 ground truth is a NumPy loop per cell written from the papers' equations (the
``.rnn`` files), ``test_float64_loops_follow_the_reference_backend`` checks each against
rnnc's reference backend at T = 40. The reference backend itself is a PyTorch loop of about
1.4 ms per step for Mamba on this CPU (90 s at this length); the NumPy loops take under 3 s.

Under Triton's interpreter (no GPU) only Mamba runs: its scan takes 35 to 45 s here with the
slice-by-slice scan of tests/interpreter_scan.py and chunks of 256 steps. The other kernels
cost far more per step in the interpreter (measured on this 2-core CPU at T = 4096 or 256) and
run when a GPU is present; a cell whose Triton backend does not exist is skipped with the
backend's reason.
"""

import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cells import rel_err
from interpreter_scan import fast_scan
from refs.data import fresh_seed

import rnnc
from rnnc import config

pytest.importorskip("triton")

T = 65_536
DIMS = {"slstm": {"H": 8}, "gla": {"K": 8, "V": 8}, "gated_deltanet": {"K": 8, "V": 8}, "mamba": {"D": 8, "N": 4}}

# Tolerances, relative by norm over the whole sequence, float32 kernels against float64.
# A stable recurrence damps the rounding error it makes at each step (fp32 unit roundoff
# u = 6e-8, a few roundings per step) by the decays that follow, so the error it carries is
# about u times a few times the memory length L = 1 / (1 - a) of its slowest channel, not u
# times T. Mamba here: dt >= 0.002 and |A| >= 1 give L <= 500 steps at the extreme and about
# 30 typically: 1e-4 leaves room for the extreme channels. GLA and gated DeltaNet: decays
# exp(logsigmoid(x) / 16) reach L of several thousand steps in a few channels, and the chunked
# kernels form each chunk's output from cumulative sums of log decays in fp32: 1e-3.
# sLSTM: exponential gates, a running max and a division by the normaliser each step; with a
# forget bias of 3 the memory is about 20 steps: 1e-4.
# Measured on this CPU (interpreter): Mamba at T = 65,536 y 5e-8, S 3e-7; at T = 4096 GLA and
# gated DeltaNet 1e-7 to 2e-7, sLSTM at T = 1024 2e-7. The tolerances are bounds, not fits.
TOLERANCE = {"mamba": 1e-4, "slstm": 1e-4, "gla": 1e-3, "gated_deltanet": 1e-3}

# Seconds per step of the Triton kernels under the interpreter, measured on this CPU (the
# interpreter's cost is per operation): what 65,536 steps would take.
INTERPRETER_SECONDS_PER_STEP = {"slstm": 18e-3, "gla": 1.8e-3, "gated_deltanet": 6.6e-3, "mamba": 0.6e-3}
INTERPRETER_BUDGET_S = 60


def _inputs(cell: str, steps: int, gen: torch.Generator) -> tuple[dict, dict]:
    """float64 arguments and initial states in the rnnc layout ([1, T, 1, *shape] inputs)."""

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    def seq(*shape):
        return randn(1, steps, 1, *shape)

    d = DIMS[cell]
    if cell == "mamba":
        D, N = d["D"], d["N"]
        args = {
            "u": seq(D),
            "dt": F.softplus(0.5 * seq(D) - 4.0),  # about 0.002 to 0.1, as Mamba's dt initialisation
            "B": seq(N),
            "C": seq(N),
            "A": -torch.arange(1, N + 1, dtype=torch.float64).expand(1, D, N).clone(),  # S4D-real: -(1..N)
            "Dskip": torch.ones(1, D, dtype=torch.float64),
        }
        return args, {"S": 0.1 * randn(1, 1, D, N)}
    if cell == "slstm":
        H = d["H"]
        bias = torch.zeros(1, 4, H, dtype=torch.float64)
        bias[:, 1] = 3.0  # the forget gate's bias: a memory of tens of steps, as xLSTM initialises it
        args = {"x": seq(4, H), "R": randn(1, 4, H, H) / math.sqrt(H), "b": bias}
        return args, {}  # zero states: the first step takes the n == 0 branch
    K, V = d["K"], d["V"]
    q, k, v = seq(K), seq(K), seq(V)
    if cell == "gla":
        g = F.logsigmoid(seq(K)) / 16  # GLA's gate normaliser
        return {"q": q / math.sqrt(K), "k": k / math.sqrt(K), "v": v, "g": g}, {"S": 0.1 * randn(1, 1, K, V)}
    args = {
        "q": F.normalize(q, dim=-1),
        "k": F.normalize(k, dim=-1),  # the delta rule is a contraction only for unit keys
        "v": v,
        "g": F.logsigmoid(seq() + 3.0),
        "beta": torch.sigmoid(seq()),
    }
    return args, {"S": 0.1 * randn(1, 1, K, V)}


# --- float64 loops from the papers' equations (B = NH = 1 squeezed) ---------------------------
def _mamba(u, dt, B, C, A, Dskip, S):
    """S = exp(dt A) S + dt u B (zero-order hold on A, Euler on B); y = S C + Dskip u."""
    decay = np.exp(dt[:, :, None] * A)
    drive = (dt * u)[:, :, None] * B[:, None, :]
    states = np.empty_like(decay)
    for t in range(len(u)):
        S = decay[t] * S + drive[t]
        states[t] = S
    return {"y": np.einsum("tdn,tn->td", states, C) + Dskip * u}, {"S": S}


def _gla(q, k, v, g, S):
    """S = diag(exp(g)) S + k v^T; o = q S."""
    decay = np.exp(g)[:, :, None]
    outer = k[:, :, None] * v[:, None, :]
    states = np.empty_like(outer)
    for t in range(len(q)):
        S = decay[t] * S + outer[t]
        states[t] = S
    return {"o": np.einsum("tk,tkv->tv", q, states)}, {"S": S}


def _gated_deltanet(q, k, v, g, beta, S):
    """S = exp(g) (S - beta k (k^T S)) + beta k v^T; o = q S."""
    decay, outputs = np.exp(g), np.empty_like(v)
    for t in range(len(q)):
        kt = k[t]
        S = decay[t] * (S - beta[t] * np.outer(kt, kt @ S)) + beta[t] * np.outer(kt, v[t])
        outputs[t] = q[t] @ S
    return {"o": outputs}, {"S": S}


def _slstm(x, R, b):
    """sLSTM with gates i, f, z, o; stabiliser m, normaliser n (zero states to start)."""
    H = x.shape[-1]
    h, c, n, m = (np.zeros(H) for _ in range(4))
    outputs = np.empty((len(x), H))
    for t in range(len(x)):
        i, f, z, o = x[t] + R @ h + b
        log_f_plus_m = m + np.minimum(f, 0.0) - np.log1p(np.exp(-np.abs(f)))  # m + logsigmoid(f)
        m_new = np.where(n == 0, i, np.maximum(i, log_f_plus_m))
        i_gate, f_gate = np.exp(i - m_new), np.exp(log_f_plus_m - m_new)
        c = f_gate * c + i_gate * np.tanh(z)
        n = f_gate * n + i_gate
        h = c / n / (1.0 + np.exp(-o))
        m = m_new
        outputs[t] = h
    return {"h": outputs}, {"h": h, "c": c, "n": n, "m": m}


LOOPS = {"mamba": _mamba, "gla": _gla, "gated_deltanet": _gated_deltanet, "slstm": _slstm}


def _float64_loop(cell: str, args: dict, state: dict) -> tuple[dict, dict]:
    """The cell's loop on squeezed NumPy arrays; results back in the rnnc layout."""
    inputs = {d.name for d in rnnc.compile(f"examples/{cell}.rnn", backend="reference").plan.ir.inputs}
    squeeze = {k: (v[0, :, 0] if k in inputs else v[0]).numpy() for k, v in args.items()}
    squeeze.update({k: v[0, 0].numpy() for k, v in state.items()})
    outputs, finals = LOOPS[cell](**squeeze)
    return (
        {k: torch.from_numpy(np.ascontiguousarray(v))[None, :, None] for k, v in outputs.items()},
        {k: torch.from_numpy(np.asarray(v))[None, None] for k, v in finals.items()},
    )


@pytest.mark.parametrize("cell", sorted(LOOPS))
def test_float64_loops_follow_the_reference_backend(cell):
    seed = fresh_seed()
    args, state = _inputs(cell, 40, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        theirs = rnnc.compile(f"examples/{cell}.rnn", backend="reference")(state=state, **args)
    outputs, finals = _float64_loop(cell, args, state)
    for key, value in theirs.outputs.items():
        assert rel_err(outputs[key], value) < 1e-12, (cell, key, seed)
    for key, value in theirs.state.items():
        assert rel_err(finals[key], value) < 1e-12, (cell, key, seed)


@pytest.mark.parametrize("cell", sorted(LOOPS))
def test_long_sequence_stays_finite_and_accurate(cell):
    try:
        triton_cell = rnnc.compile(f"examples/{cell}.rnn", backend="triton")
    except rnnc.BackendError as error:
        pytest.skip(f"no Triton backend for {cell} yet: {error}")
    interpreted = config.triton_interpret() or not torch.cuda.is_available()
    estimate = INTERPRETER_SECONDS_PER_STEP[cell] * T
    if interpreted and estimate > INTERPRETER_BUDGET_S:
        pytest.skip(
            f"{cell}'s kernels take about {INTERPRETER_SECONDS_PER_STEP[cell] * 1e3:.1f} ms per step in "
            f"Triton's interpreter, {estimate / 60:.0f} min for {T} steps; this runs on a GPU"
        )
    seed = fresh_seed()
    args, state = _inputs(cell, T, torch.Generator().manual_seed(seed))
    device = "cpu" if interpreted else "cuda"
    args32 = {k: v.float().to(device) for k, v in args.items()}
    state32 = {k: v.float().to(device) for k, v in state.items()}
    start = time.perf_counter()
    with fast_scan(), torch.no_grad():
        ours = triton_cell(state=state32, **args32)
    seconds = time.perf_counter() - start
    assert triton_cell.last_backend == "triton"
    outputs, finals = _float64_loop(cell, args, state)
    tol = TOLERANCE[cell]
    for kind, mine, truth in (("output", ours.outputs, outputs), ("final state", ours.state, finals)):
        for key, value in mine.items():
            value = value.cpu()
            assert torch.isfinite(value).all(), f"{cell} {kind} {key}: not finite (seed {seed})"
            err = rel_err(value, truth[key])
            assert err < tol, f"{cell} {kind} {key}: relative error {err:.2e} >= {tol} (seed {seed}, {seconds:.0f} s)"
