"""``rnnc.nn.Layer`` as a model would use it: trains, matches a module built by hand from the
paper loops (tests/refs/loops.py) with the same parameters, decodes step by step, takes packed
variable-length batches, compiles, runs under autocast, pickles and round-trips its state_dict.
Fresh random data each run; the reference backend unless a test says otherwise.
"""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from refs import loops
from refs.check import rel_err

import rnnc.nn

D_MODEL, HEADS = 8, 2
SETUPS = {
    "lstm": dict(dims={"H": 5}),
    "gla": dict(dims={"K": 4, "V": 3}, activations={"g": F.logsigmoid}),
    "mamba": dict(
        dims={"D": 4, "N": 3},
        activations={"dt": F.softplus},
        init={"A": lambda a: a.uniform_(-1.0, -0.1), "Dskip": 1.0},
    ),
}


def make_layer(name: str, backend: str = "reference", **extra) -> rnnc.nn.Layer:
    return rnnc.nn.Layer(
        f"examples/{name}.rnn", d_model=D_MODEL, num_heads=HEADS, backend=backend, **SETUPS[name], **extra
    )


class HandBuilt(torch.nn.Module):
    """The same layer written out: Linear projections, the paper loop, a Linear back to d_model."""

    def __init__(self, name: str, layer: rnnc.nn.Layer):
        super().__init__()
        self.name, self.shapes, self.heads = name, layer.shapes, layer.num_heads
        self.activations = dict(SETUPS[name].get("activations", {}))
        self.proj = torch.nn.ModuleDict()
        for key, proj in layer.in_proj.items():
            mine = torch.nn.Linear(proj.in_features, proj.out_features, dtype=proj.weight.dtype)
            mine.load_state_dict(proj.state_dict())
            self.proj[key] = mine
        self.weights = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(v.detach().clone()) for k, v in layer.weights.items()}
        )
        self.out = torch.nn.Linear(
            layer.out_proj.in_features, layer.out_proj.out_features, dtype=layer.out_proj.weight.dtype
        )
        self.out.load_state_dict(layer.out_proj.state_dict())

    def forward(self, x):
        B, T, _ = x.shape
        args = {}
        for key, proj in self.proj.items():
            value = proj(x)
            value = self.activations.get(key, lambda v: v)(value)
            args[key] = value.reshape(B, T, self.heads, *self.shapes[key])
        args.update(self.weights.items())
        outputs, finals = loops.run(self.name, args)
        y = torch.cat([v.reshape(B, T, -1) for v in outputs.values()], dim=-1)
        return self.out(y), finals


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_layer_matches_a_hand_built_module_with_the_same_parameters(name):
    layer = make_layer(name).double()
    hand = HandBuilt(name, layer)
    x = torch.randn(3, 7, D_MODEL, dtype=torch.float64)
    y, state = layer(x)
    y_hand, state_hand = hand(x)
    assert rel_err(y, y_hand) < 1e-10
    for key in state_hand:
        assert rel_err(state[key], state_hand[key]) < 1e-10
    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_hand * weights).sum().backward()
    ours = dict(layer.named_parameters())
    theirs = {
        **{f"in_proj.{k}.{p}": getattr(m, p) for k, m in hand.proj.items() for p in ("weight", "bias")},
        **{f"weights.{k}": v for k, v in hand.weights.items()},
        "out_proj.weight": hand.out.weight,
        "out_proj.bias": hand.out.bias,
    }
    assert sorted(ours) == sorted(theirs)
    for key, p in ours.items():
        assert rel_err(p.grad, theirs[key].grad) < 1e-10, key


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_layer_trains(name):
    layer = make_layer(name)
    x = torch.randn(8, 12, D_MODEL)
    mix = torch.randn(D_MODEL, D_MODEL) / math.sqrt(D_MODEL)
    target = torch.cumsum(x @ mix, dim=1) / torch.arange(1, 13).sqrt()[None, :, None]  # a running summary of x
    opt = torch.optim.Adam(layer.parameters(), lr=2e-2)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(layer(x)[0], target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses[::10]


def test_initialisation_follows_torch_lstm_and_can_be_overridden():
    layer = make_layer("lstm")
    R, b = layer.weights["R"], layer.weights["b"]
    bound = 1 / math.sqrt(5)
    assert R.abs().max() <= bound and R.abs().max() > 0.5 * bound and R.std() > 0.2 * bound
    assert torch.count_nonzero(b) == 0  # vectors start at zero
    mamba = make_layer("mamba")
    assert (mamba.weights["A"] < 0).all() and (mamba.weights["Dskip"] == 1).all()  # init= overrides


@pytest.mark.parametrize("name", sorted(SETUPS))
def test_layer_step_by_step_equals_the_full_sequence(name):
    layer = make_layer(name).double()
    x = torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    y, final = layer(x)
    state, ys = None, []
    for t in range(6):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    assert rel_err(torch.stack(ys, 1), y) < 1e-12
    for key in final:
        assert rel_err(state[key], final[key]) < 1e-12


def test_layer_packed_batch_equals_separate_runs():
    layer = make_layer("gla").double()
    lengths = (1, 17, 64)
    xs = [torch.randn(1, n, D_MODEL, dtype=torch.float64) for n in lengths]
    cu = torch.tensor([0, 1, 18, 82], dtype=torch.int32)
    y, state = layer(torch.cat(xs, 1), cu_seqlens=cu)
    for b, x in enumerate(xs):
        y_b, state_b = layer(x)
        assert rel_err(y[:, cu[b] : cu[b + 1]], y_b) < 1e-12
        assert rel_err(state["S"][b], state_b["S"][0]) < 1e-12


def test_layer_under_autocast_bfloat16():
    layer = make_layer("lstm")
    x = torch.randn(2, 5, D_MODEL)
    y32, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x)
    assert y.dtype == torch.bfloat16 and state["h"].dtype == torch.float32 and state["c"].dtype == torch.float32
    assert rel_err(y.float(), y32) < 5e-2
    y.float().sum().backward()
    assert layer.weights["R"].grad.dtype == torch.float32 and torch.isfinite(layer.weights["R"].grad).all()


def test_layer_pickles_deep_copies_and_round_trips_its_state_dict():
    layer = make_layer("mamba")
    x = torch.randn(2, 4, D_MODEL)
    y, _ = layer(x)
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        torch.testing.assert_close(other(x)[0], y, rtol=0, atol=0)
    fresh = make_layer("mamba")
    assert not torch.equal(fresh(x)[0], y)
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(fresh(x)[0], y, rtol=0, atol=0)


def test_cell_pickles():
    cell = rnnc.compile("examples/gla.rnn", backend="reference")
    args = {n: torch.randn(1, 3, 1, 4) for n in ("q", "k", "v")}
    args["g"] = -torch.rand(1, 3, 1, 4)
    again = pickle.loads(pickle.dumps(cell))
    assert again.name == "gla" and again.backend == "reference"
    torch.testing.assert_close(again(**args).o, cell(**args).o, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(dims={}), "missing H"),
        (dict(dims={"H": 4, "K": 2}), "unknown K"),
        (dict(dims={"H": 0}), "positive int"),
        (dict(dims={"H": 4}, init={"W": 0.0}), "init: cell lstm has no input or weight W"),
        (dict(dims={"H": 4}, activations={"h": F.relu}), "activations: cell lstm has no input or weight h"),
    ],
)
def test_layer_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        rnnc.nn.Layer("examples/lstm.rnn", d_model=4, num_heads=1, backend="reference", **kwargs)


def test_layer_input_layout_error():
    with pytest.raises(ValueError, match=r"^x: needs \[B, T, d_model\] with d_model = 8, has \[2, 8\]"):
        make_layer("lstm")(torch.randn(2, 8))


def test_layer_on_the_triton_kernels_equals_the_reference():
    torch.manual_seed(0)
    ours = rnnc.nn.Layer("examples/lstm.rnn", d_model=8, num_heads=1, dims={"H": 16}, backend="triton")
    ref = rnnc.nn.Layer("examples/lstm.rnn", d_model=8, num_heads=1, dims={"H": 16}, backend="reference")
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, 8)
    (y, state), (y_ref, state_ref) = ours(x), ref(x)
    assert ours.cell.last_backend == "triton"
    assert rel_err(y, y_ref) < 1e-5 and rel_err(state["c"], state_ref["c"]) < 1e-5
    y.square().sum().backward()
    y_ref.square().sum().backward()
    assert rel_err(ours.weights["R"].grad, ref.weights["R"].grad) < 1e-4
