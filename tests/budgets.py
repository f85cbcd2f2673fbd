"""A tiling's budgets recomputed from the kernels' documented tiles (docs/decisions.md), not from the models."""

import math


def recheck_budgets(p, gpu, params):
    """Budgets recomputed here from the kernels' documented tiles, not from the model's expressions."""
    pow2 = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
    threads = params["num_warps"] * gpu.warp_size
    assert threads <= gpu.max_threads_per_block
    if p.strategy == "sequential":
        assert params["BLOCK_B"] >= 16 and pow2(params["BLOCK_B"])  # tl.dot rows
        cols = 1 << math.ceil(math.log2(max(16, math.ceil(p.hidden / params["SPLIT"]))))
        full = 1 << math.ceil(math.log2(max(16, p.hidden)))
        assert cols >= 16 and pow2(params["BLOCK_K"]) and params["BLOCK_K"] >= (16 if p.bytes == 2 else 8)
        if not params["STREAM_WEIGHTS"]:  # weights kept on chip are held and contracted whole
            assert params["BLOCK_K"] == full
        held = full if not params["STREAM_WEIGHTS"] else params["BLOCK_K"]
        weight_words = p.gates * cols * held * p.bytes / 4  # the weights a program holds at once
        gradient_words = p.gates * cols * held  # backward: their fp32 gradients
        assert (weight_words + gradient_words) / threads <= gpu.registers_per_thread
        assert params["SPLIT"] <= math.ceil(p.hidden / 16)  # slices are at least 16 wide
    elif p.strategy == "scan":
        assert pow2(params["BLOCK_C"]) and pow2(params["BLOCK_T"]) and params["BLOCK_T"] >= 16
        assert params["BLOCK_C"] * params["BLOCK_T"] >= threads  # no idle lanes
        live = params["BLOCK_C"] * params["BLOCK_T"] * 3 / threads  # at least a, b and the state per element
        assert live <= gpu.registers_per_thread
    else:
        assert params["CHUNK"] >= 16 and params["BV"] >= 16 and params["BK"] >= (16 if p.bytes == 2 else 8)
        k_pad = 1 << math.ceil(math.log2(max(16, p.key_dim)))
        assert pow2(params["BK"]) and params["BK"] <= k_pad  # pieces of the key dimension
        # dot operands in shared memory: a chunk's q and k pieces and values, the state's columns (piece by piece)
        state_rows = k_pad if params["BK"] == k_pad else params["BK"]
        staged = params["CHUNK"] * (2 * params["BK"] + params["BV"]) * p.bytes + state_rows * params["BV"] * p.bytes
        assert staged <= gpu.shared_memory_per_block_optin
        assert k_pad * params["BV"] / threads <= gpu.registers_per_thread  # the fp32 state columns, whole K
