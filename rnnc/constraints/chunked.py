"""The tiling model of the chunked kernels (matrix states: linear attention, GLA, DeltaNet...).

Time is cut into chunks of CHUNK steps. Within a chunk the outputs come from
``tl.dot``s (Q K^T, then with V); between chunks a sequential pass carries the
state. Each program holds BV value columns of the state over the whole key
dimension (identity-minus-rank-one transitions, DeltaNet, read ``k^T S`` over all
of K; the other decays could split K over programs, but the outputs would then be
partial sums) and the chunk's products loop over K in BK pieces. Registers and
shared memory are estimated for the forward and the backward kernel from the
tiles they hold, with coefficients calibrated against the compiler
(``bench/calibrate_tiling.py``).

Example:
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.constraints.problem import problem_of
    >>> from rnnc.constraints.profiles import load_profile
    >>> plan = analyse_source(open("examples/simple_gla.rnn").read())
    >>> p = problem_of(plan, {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128}, "bfloat16")
    >>> best = build_model(p, load_profile("h100"), extended=False).solve().values
    >>> best["CHUNK"], best["BK"], best["BV"], best["num_warps"]
    (16, 128, 16, 8)
"""

from __future__ import annotations

from rnnc.constraints.common import (
    budget_constraints,
    powers_of_two,
    programs_per_sm,
    register_pressure,
    threads_of,
    time_unit,
    warpgroup_mma,
    warps_var,
)
from rnnc.constraints.model import Const, Constraint, Model, Var, maximum, table
from rnnc.constraints.problem import Problem, next_pow2
from rnnc.constraints.profiles import GpuProfile

# Registers per thread are fp32 quarter-words per element held, per kind of tile, over the threads, plus a fixed
# part: [CHUNK, BK] pieces of q and k and their decayed copies ("chunk_key"), [CHUNK, BV] values and outputs,
# the [K, BV] state, the [CHUNK, CHUNK] scores and masks. Fitted to the compiler on sm_90 with 16-bit dot
# operands (bench/calibrate_tiling.py; simple GLA, GLA, DeltaNet at K = 64, 128) and 20 registers above the fit,
# so that no measured tiling the model accepts spills (bench/results/tiling-calibration-cpu.json).
FORWARD = {"chunk_key": 14, "chunk_value": 4, "state": 8, "scores": 12, "fixed": 130}
BACKWARD = {"chunk_key": 20, "chunk_value": 16, "state": 26, "scores": 20, "fixed": 120}
DELTA = {
    "forward": {"chunk_value": 4, "scores": 8, "fixed": 25},
    "backward": {"chunk_value": 16, "scores": 12, "fixed": 40},
}
DIAGONAL_CHUNK_KEY = 6  # per-channel decays hold more [CHUNK, K] tiles (e^gamma, k e^-gamma)
# without Hopper's warpgroup MMA (which reads operands from shared memory) the backward kernel holds its dot
# operands in registers: 30 more (sm_80: simple GLA 255, GLA 283 where sm_90 has 177 and 220)
REGISTER_OPERANDS_BACKWARD = 30
# K pieces (not built, so assumed, not calibrated): the state and its cotangent stay whole, and the fixed part of
# the whole-K kernels (addresses and masks of [CHUNK, K] tiles) shrinks to that of a piece
PIECE_STATE = {"forward": 4, "backward": 8}
PIECE_FIXED = 64
CHUNK_STEP_NS = 400  # one dependent step of the inter-chunk pass: load, dot, store (estimate)
PIECE_NS = 100  # one more piece of the key-dimension loop in a chunk (estimate)
KERNELS = 3  # chunk-local decays and products, the inter-chunk pass, the outputs


def build_model(p: Problem, gpu: GpuProfile, extended: bool = True) -> Model:
    """The CP-SAT model of the chunked kernels for problem ``p`` on ``gpu``.

    ``extended=False`` keeps to the kernels that exist: the key dimension in one piece.
    """
    k_pad = next_pow2(p.key_dim, least=16)
    v_pad = next_pow2(p.value_dim, least=16)
    # per-channel decays keep chunks of at most 16 steps in the kernels (their e^-gamma grows along a chunk)
    chunk = Var("CHUNK", (8, 16) if p.decay == "diagonal" else (8, 16, 32, 64, 128))
    bk = Var("BK", powers_of_two(16 if p.bytes == 2 else 8, k_pad) if extended else (k_pad,))  # key pieces
    bv = Var("BV", powers_of_two(8, v_pad))
    warps = warps_var(gpu, (1, 2, 4, 8, 16))
    stages = Var("num_stages", (1, 2, 3, 4))
    threads = threads_of(warps, gpu)
    words = 2 if p.dtype == "float64" else 1

    def registers(direction: str) -> object:
        """Registers per thread of the forward or backward kernel."""
        count = dict(FORWARD if direction == "forward" else BACKWARD)
        for kind, extra in (DELTA[direction] if p.rank_one else {}).items():
            count[kind] += extra
        if p.decay == "diagonal":
            count["chunk_key"] += DIAGONAL_CHUNK_KEY
        state = table(bk, lambda b: count["state"] if b == k_pad else PIECE_STATE[direction])
        quarters = (
            chunk * bk * count["chunk_key"]
            + chunk * bv * count["chunk_value"]
            + bv * state * k_pad
            + chunk * chunk * count["scores"]
        )
        if direction == "backward" and not warpgroup_mma(gpu):
            count["fixed"] += REGISTER_OPERANDS_BACKWARD
        fixed = table(bk, lambda b: count["fixed"] if b == k_pad else PIECE_FIXED)
        return (quarters * words).ceil_div(threads * 4) + fixed

    forward_regs = registers("forward")
    backward_regs = registers("backward")
    regs_per_thread = maximum(forward_regs, backward_regs)
    regs_per_program = regs_per_thread * threads
    # shared memory (calibrated on sm_90): the state's columns as a dot operand (4 bytes per element), the
    # delta rule's [CHUNK, K] factor, q and k pieces per pipeline stage beyond the first; backward also the
    # cotangents' operands, 3 bytes per [CHUNK, K] element (16-bit inputs), twice the state for the delta rule
    key_bytes = chunk * bk * (p.bytes * 3 // 2)
    state_rows = table(bk, lambda b: k_pad if b == k_pad else b)  # K pieces stage the state piece by piece
    forward_smem = bv * state_rows * 4 + (chunk * bk * (2 * p.bytes) if p.rank_one else 0) + 1024
    forward_smem = forward_smem + (stages + (-1)) * (key_bytes + chunk * bv * p.bytes)
    backward_smem = bv * state_rows * (8 if p.rank_one else 4) + key_bytes * 2 + 1024
    smem = maximum(forward_smem, backward_smem)
    per_sm = programs_per_sm(gpu, regs_per_program, smem, threads)
    v_blocks = table(bv, lambda b: -(-p.value_dim // b))
    programs = v_blocks * (p.B * p.NH)
    minimum_k = 16 if p.bytes == 2 else 8
    constraints = budget_constraints(gpu, regs_per_thread, regs_per_program, smem, per_sm) + [
        # tl.dot's M side is the chunk (rows of Q, K): at least 16
        Constraint("dot rows (CHUNK)", 16, chunk, "tl.dot needs at least 16 rows: the chunk length"),
        # Q K^T contracts over the key tile: K >= 16 for 16-bit inputs, >= 8 for fp32
        Constraint("dot contraction (BK)", minimum_k, bk, "tl.dot needs K >= 16 (16-bit) or >= 8 (fp32)"),
        # P V and Q S produce BV columns: N >= 16
        Constraint("dot columns (BV)", 16, bv, "tl.dot needs at least 16 columns"),
    ]
    chunks = table(chunk, lambda c: -(-p.T // c))
    # FLOPs per (row, head), padded tiles: intra-chunk Q K^T (recomputed per V block) and P V,
    # inter-chunk Q S and the state update; the WY form adds K K^T, the solve and W, U
    # (padded extents are tabulated per tile size, which keeps the solver's bounds tight)
    v_padded = table(bv, lambda b: -(-p.value_dim // b) * b)
    per_token = chunk * (v_blocks * (k_pad * 2) + v_padded * 2) + v_padded * (k_pad * 4)
    if p.rank_one:
        per_token = per_token + chunk * (k_pad * 2 + chunk + v_padded * 2 + k_pad * 2)
    usable = table(warps, lambda w: {1: 25, 2: 50, 4: 80, 8: 100, 16: 90}[w])
    tokens = p.B * p.NH * p.T
    unit = time_unit(tokens)  # times below are in units of `unit` ns, so nothing overflows 64 bits
    # per token in 1/10000 ns first, then over all tokens
    per_token_time = (per_token * 1_000_000).ceil_div(usable * gpu.tensor_flops_per_ns(p.dtype))
    compute_ns = (per_token_time * -(-tokens // unit)).ceil_div(10_000)
    streamed = tokens * (p.in_elems + p.out_elems) * p.bytes
    states_bytes = chunks * (p.B * p.NH * p.key_dim * p.value_dim * 4 * 2)  # chunk states written, read back
    memory_ns = (states_bytes + Const(streamed)).ceil_div(gpu.bytes_per_ns() * unit)
    waves = programs.ceil_div(maximum(1, per_sm) * gpu.sm_count)
    pieces = table(bk, lambda b: -(-k_pad // b))  # the key-dimension loop: each piece is another dependent dot
    chain_ns = (waves * chunks * (pieces * PIECE_NS + CHUNK_STEP_NS)).ceil_div(unit)
    launches = -(-int(KERNELS * gpu.launch_overhead_us * 1000) // unit)
    objective = maximum(compute_ns, memory_ns) + chain_ns + launches
    quantities = {
        "registers per thread": regs_per_thread,
        "register pressure": register_pressure(regs_per_thread, warps, gpu),
        "forward registers per thread": forward_regs,
        "backward registers per thread": backward_regs,
        "shared memory per program": smem,
        "forward shared memory per program": forward_smem,
        "backward shared memory per program": backward_smem,
        "programs": programs,
        "programs per SM": per_sm,
        "waves": waves,
        "compute ns": compute_ns,
        "memory ns": memory_ns,
        "chunk chain ns": chain_ns,
    }
    tiebreak = regs_per_program.ceil_div(1024) + smem.ceil_div(4096) + stages  # then the fewest resources
    variables = [chunk, bk, bv, warps, stages]
    return Model("chunked", variables, constraints, objective, quantities, tiebreak, unit_ns=unit)
