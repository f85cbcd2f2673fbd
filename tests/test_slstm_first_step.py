"""sLSTM's first step with a very negative input gate (issue 14, item 5).

At the first step (n == 0) the stabiliser starts at the input gate, m = i, so the forget gate is
exp(m0 + logsigmoid(f) - i): with i below -88 that overflows float32 and multiplies the empty
history c0 = n0 = 0, inf * 0 = NaN, in both backends (FlashRNN's formula does the same). The
float64 loop from the paper has no overflow there: h1 = sigmoid(o) tanh(z) exactly. Both backends
in float32 must agree with it, forward and every gradient.
"""

import pytest
import torch
from cells import rel_err
from refs import data, loops

import rnnc

pytest.importorskip("triton")


def _first_gate_far_below(seed: int, B=2, T=4, NH=1, H=16, below=-100.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, NH, 4, H, generator=gen, dtype=torch.float64)
    x[:, 0, :, 0] = below + torch.rand(B, NH, H, generator=gen, dtype=torch.float64)  # i at the first step
    R = torch.randn(NH, 4, H, H, generator=gen, dtype=torch.float64) / H**0.5
    b = 0.5 * torch.randn(NH, 4, H, generator=gen, dtype=torch.float64)
    return {"x": x, "R": R, "b": b}


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_an_input_gate_below_minus_88_at_the_first_step_gives_no_nan(backend):
    seed = data.fresh_seed()
    tensors = _first_gate_far_below(seed)
    leaves64 = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    expected, finals = loops.run("slstm", leaves64)  # float64: exp(100) is finite there
    assert torch.isfinite(expected["h"]).all()
    cell = rnnc.compile("examples/slstm.rnn", backend=backend)
    leaves = {k: v.float().requires_grad_() for k, v in tensors.items()}
    out = cell(**leaves)
    assert torch.isfinite(out.h).all(), f"NaN or inf at the first step (seed {seed})"
    assert rel_err(out.h, expected["h"]) < 1e-4, seed
    for name in ("c", "n", "m"):
        assert rel_err(out.state[name], finals[name]) < 1e-4, (name, seed)
    weights = torch.randn(out.h.shape, dtype=torch.float64)
    ours = torch.autograd.grad((out.h * weights.float()).sum(), list(leaves.values()))
    theirs = torch.autograd.grad((expected["h"] * weights).sum(), list(leaves64.values()))
    for name, mine, ref in zip(leaves, ours, theirs):
        assert torch.isfinite(mine).all(), (name, seed)
        assert rel_err(mine, ref) < 1e-4, (name, seed)
