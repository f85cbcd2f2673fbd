"""What bench/gpu.py measures: the cases of each family, their inputs, and the implementations that run them.

Every implementation is timed on the same problem in its own layout: layouts are converted once,
before timing, and each implementation's leaves are its own tensors. ``main_output`` brings its
first output back to the rnnc layout, so that its agreement with rnnc is recorded next to its time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LSTM_SIZES = [(16, 48), (32, 24), (64, 12), (128, 6), (256, 3), (768, 1)]  # (head dim, heads): FlashRNN's
QUICK_LSTM_SIZES = [(64, 12), (768, 1)]  # the targets of issue 5
CHUNK_SHAPES = [(4, 2048, 16, 128), (8, 1024, 8, 64), (2, 16384, 16, 128)]  # (B, T, H, D): fla's benchmarks
QUICK_CHUNK_SHAPES = [(8, 1024, 8, 64), (4, 2048, 16, 128)]
HGRN_T = [1024, 4096, 16384]  # at B = 8, NH = 12, D = 128 (1536 channels, accelerated-scan's width)
QUICK_HGRN_T = [4096]
FLASHRNN = ["flashrnn cuda_fused", "flashrnn cuda", "flashrnn triton_fused"]
FLA_CHUNK = {"gla": "chunk_gla", "simple_gla": "chunk_simple_gla", "deltanet": "chunk_delta_rule"}
FLA_CHUNK["gated_deltanet"] = "chunk_gated_delta_rule"
FAMILIES = ("check", "lstm", "slstm", "gru", "scan", "chunked", "tune")


@dataclass
class Case:
    """One cell at one shape, and the implementations timed on it (rnnc first)."""

    family: str
    cell: str
    shape: dict
    impls: list

    @property
    def label(self) -> str:
        """A short name for tables and plots, e.g. ``lstm T=1024 NH=12 H=64`` (B = 16 for every sequential case)."""
        sequential = self.family in ("lstm", "slstm", "gru")
        return f"{self.cell} " + " ".join(f"{k}={v}" for k, v in self.shape.items() if k != "B" or not sequential)

    def to_json(self) -> dict:
        return asdict(self)


def cases(family: str, mode: str) -> list[Case]:
    """The cases of a family in a mode (``full``, ``quick`` or ``smoke``).

    Example:
        >>> [c.label for c in cases("lstm", "quick")]
        ['lstm T=1024 NH=12 H=64', 'lstm T=1024 NH=1 H=768']
    """
    if mode == "smoke":  # tiny shapes under the interpreter; anchors: torch.nn, rnnc's reference, one bound to fail
        reference = ["rnnc", "rnnc reference"]
        smoke = {
            "lstm": Case("lstm", "lstm", {"B": 2, "T": 4, "NH": 1, "H": 16}, ["rnnc", "torch.nn.LSTM", FLASHRNN[0]]),
            "scan": Case("scan", "hgrn", {"B": 2, "T": 16, "NH": 1, "D": 16}, reference),
            "chunked": Case("chunked", "simple_gla", {"B": 1, "T": 16, "NH": 1, "K": 16, "V": 16}, reference),
        }
        return [smoke[family]] if family in smoke else []
    if family in ("lstm", "slstm", "gru"):
        nn = {"lstm": ["torch.nn.LSTM"], "gru": ["torch.nn.GRU"], "slstm": []}[family]
        flash = [] if family == "gru" and mode == "quick" else FLASHRNN[:2] if family == "gru" else FLASHRNN
        sizes = QUICK_LSTM_SIZES if mode == "quick" else LSTM_SIZES
        return [Case(family, family, {"B": 16, "T": 1024, "NH": nh, "H": h}, ["rnnc", *flash, *nn]) for h, nh in sizes]
    if family == "scan":
        anchors = ["fla chunk_hgrn", "fla fused_recurrent_hgrn", "accelerated-scan warp", "accelerated-scan scalar"]
        found = [Case("scan", "hgrn", {"B": 8, "T": t, "NH": 12, "D": 128}, ["rnnc", *anchors]) for t in HGRN_T]
        found = [c for c in found if mode != "quick" or c.shape["T"] in QUICK_HGRN_T]
        return found + [Case("scan", "mamba", {"B": 8, "T": 2048, "NH": 24, "D": 64, "N": 16}, ["rnnc"])]
    if family == "chunked":
        shapes = QUICK_CHUNK_SHAPES if mode == "quick" else CHUNK_SHAPES
        return [
            Case("chunked", cell, {"B": b, "T": t, "NH": h, "K": d, "V": d}, ["rnnc", f"fla {FLA_CHUNK[cell]}"])
            for cell in FLA_CHUNK
            for b, t, h, d in shapes
        ]
    return []


def make_inputs(case: Case, device: str, dtype, seed: int) -> dict:
    """Well-conditioned random inputs and weights in the rnnc layout (log decays <= 0, unit keys, ...)."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device=device).manual_seed(seed)
    s = case.shape
    B, T, NH = s["B"], s["T"], s["NH"]

    def randn(*shape, scale=1.0, shift=0.0):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * scale + shift

    if case.cell in ("lstm", "slstm", "gru"):
        G, H = (3 if case.cell == "gru" else 4), s["H"]
        out = {"x": randn(B, T, NH, G, H), "R": randn(NH, G, H, H, scale=H**-0.5), "b": randn(NH, G, H, scale=0.1)}
    elif case.cell == "hgrn":
        out = {"x": randn(B, T, NH, s["D"]), "g": F.logsigmoid(randn(B, T, NH, s["D"], shift=2.0))}
    elif case.cell == "mamba":
        D, N = s["D"], s["N"]
        out = {"u": randn(B, T, NH, D), "dt": F.softplus(randn(B, T, NH, D, shift=-2.0))}
        out.update(B=randn(B, T, NH, N), C=randn(B, T, NH, N), A=-torch.exp(randn(NH, D, N, scale=0.5)))
        out["Dskip"] = randn(NH, D)
    else:  # chunked: q, k, v [B, T, NH, K|V], decays and betas
        K, V = s["K"], s["V"]
        unit = case.cell in ("deltanet", "gated_deltanet")
        q, k = randn(B, T, NH, K), randn(B, T, NH, K)
        q, k = (F.normalize(q, dim=-1), F.normalize(k, dim=-1)) if unit else (q * K**-0.5, k)
        out = {"q": q, "k": k, "v": randn(B, T, NH, V)}
        if case.cell == "gla":
            out["g"] = F.logsigmoid(randn(B, T, NH, K)) / 16
        if case.cell in ("simple_gla", "gated_deltanet"):
            out["g"] = F.logsigmoid(randn(B, T, NH))
        if unit:
            out["beta"] = torch.sigmoid(randn(B, T, NH))
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


def ideal_bytes(case: Case, itemsize: int) -> dict | None:
    """Bytes an elementwise scan must move at least: every input, output and gradient crosses DRAM once
    (states saved for the backward pass are not counted). None for other families."""
    s = case.shape
    rows = s["B"] * s["T"] * s["NH"]
    if case.cell == "hgrn":
        n = rows * s["D"]
        return {"forward": 3 * n * itemsize, "fwdbwd": 8 * n * itemsize}  # fwd: x, g, h; bwd: g, h, dh, dx, dg
    if case.cell == "mamba":
        per_row = 2 * s["D"] + 2 * s["N"]  # u, dt, B, C
        forward = rows * (per_row + s["D"]) * itemsize  # ... and y
        return {"forward": forward, "fwdbwd": forward + rows * (2 * per_row + s["D"]) * itemsize}
    return None


class Impl:
    """One implementation: ``prepare`` converts rnnc-layout inputs to its own leaves once,
    ``forward`` runs it, ``main_output`` returns its first output in the rnnc layout."""

    comparable = True  # whether its outputs are the same function as rnnc's
    note = ""  # what a reader of the results must know (e.g. another dtype than asked)

    def __init__(self, name: str, case: Case, dtype):
        self.name, self.case, self.dtype = name, case, dtype

    def prepare(self, inputs: dict) -> dict:
        return {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}

    def forward(self, args: dict) -> list:
        raise NotImplementedError

    def main_output(self, outputs: list):
        return outputs[0]


class Rnnc(Impl):
    def __init__(self, name, case, dtype):
        super().__init__(name, case, dtype)
        import rnnc

        backend = "reference" if name == "rnnc reference" else "triton"
        self.cell = rnnc.compile(str(ROOT / "examples" / f"{case.cell}.rnn"), backend=backend)

    def forward(self, args):
        out = self.cell(**args)
        return [next(iter(out.outputs.values()))]


class FlashRnn(Impl):
    """FlashRNN: Wx [B, T, G, NH, H], R [G, NH, H_out, H_in], b [G, NH, H]; states default to zero."""

    def __init__(self, name, case, dtype):
        super().__init__(name, case, dtype)
        from flashrnn.flashrnn import cuda_init, flashrnn

        cuda_init.time = _NoSleep  # it sleeps up to 10 s before each compile (against build races): no timing effect
        self.flashrnn, self.backend = flashrnn, name.split()[-1]

    def prepare(self, inputs):
        x, R, b = inputs["x"], inputs["R"].transpose(0, 1), inputs["b"].transpose(0, 1)
        if (
            self.case.cell == "gru"
        ):  # its gates: Wx (r, z, n); R (g = the candidate's recurrent term, r, z); b (g, r, z, n)
            R = R[[2, 0, 1]]
            b = _cat(b[[2, 0, 1]], b[:1] * 0)
        return super().prepare({"Wx": x.transpose(2, 3), "R": R, "b": b})

    def forward(self, args):
        name = {"bfloat16": "bfloat16", "float16": "float16"}.get(str(self.dtype).split(".")[-1], "float32")
        states, _ = self.flashrnn(
            args["Wx"], args["R"], args["b"], function=self.case.cell, backend=self.backend, dtype=name
        )
        return [states[0]]  # h: [B, T, NH, H]


class TorchRnn(Impl):
    """torch.nn.LSTM / GRU (cuDNN) with input and hidden size NH * H: the same problem only at NH = 1,
    and it includes its input projection. Outputs are not compared."""

    comparable = False

    def __init__(self, name, case, dtype):
        super().__init__(name, case, dtype)
        import torch

        width = case.shape["NH"] * case.shape["H"]
        kind = torch.nn.LSTM if name.endswith("LSTM") else torch.nn.GRU
        self.module = kind(width, width, batch_first=True).to(device=_device(), dtype=dtype)
        try:  # cuDNN may refuse bfloat16 RNNs: then time float16, and say so
            self.module(torch.zeros(1, 1, width, device=_device(), dtype=dtype))
        except RuntimeError as exc:
            self.dtype, self.module = torch.float16, self.module.to(torch.float16)
            self.note = f"ran in float16: {dtype} refused ({str(exc).splitlines()[0][:200]})"

    def prepare(self, inputs):
        x = inputs["x"].to(self.dtype)
        return super().prepare({"input": x[:, :, :, 0].reshape(x.shape[0], x.shape[1], -1)})

    def forward(self, args):
        return [self.module(args["input"])[0]]

    def leaves(self, args):
        return [*args.values(), *self.module.parameters()]


class FlaChunk(Impl):
    """fla's chunk kernels: [B, T, H, D] like rnnc, scale 1 (rnnc's cells have none), the final state returned."""

    def __init__(self, name, case, dtype):
        super().__init__(name, case, dtype)
        import importlib

        op = name.split()[-1]
        family = {"chunk_delta_rule": "delta_rule", "chunk_gated_delta_rule": "gated_delta_rule"}.get(op, op[6:])
        self.fn = getattr(importlib.import_module(f"fla.ops.{family}"), op)

    def forward(self, a):
        rest = {"gla": ["g"], "simple_gla": ["g"], "deltanet": ["beta"], "gated_deltanet": ["g", "beta"]}[
            self.case.cell
        ]
        o, _ = self.fn(a["q"], a["k"], a["v"], *[a[n] for n in rest], scale=1.0, output_final_state=True)
        return [o]


class FlaHgrn(Impl):
    """fla's HGRN kernels: x, g [B, T, NH * D] (heads folded into channels), log-space gates like rnnc."""

    def __init__(self, name, case, dtype):
        super().__init__(name, case, dtype)
        from fla.ops import hgrn

        self.fn = getattr(hgrn, name.split()[-1])

    def prepare(self, inputs):
        return super().prepare({k: v.flatten(2) for k, v in inputs.items()})

    def forward(self, a):
        return [self.fn(a["x"], a["g"], output_final_state=True)[0]]

    def main_output(self, outputs):
        s = self.case.shape
        return outputs[0].view(s["B"], s["T"], s["NH"], s["D"])


class AcceleratedScan(Impl):
    """accelerated-scan: gates a = exp(g) (not log space) and tokens x as [B, C, T], time last."""

    def __init__(self, name, case, dtype):
        super().__init__(name, case, dtype)
        import importlib

        self.fn = importlib.import_module(f"accelerated_scan.{name.split()[-1]}").scan

    def prepare(self, inputs):
        def time_last(t):
            return t.flatten(2).transpose(1, 2).contiguous()

        return super().prepare(
            {"gates": time_last(inputs["g"].float().exp().to(self.dtype)), "tokens": time_last(inputs["x"])}
        )

    def forward(self, a):
        return [self.fn(a["gates"], a["tokens"])]

    def main_output(self, outputs):
        s = self.case.shape
        return outputs[0].transpose(1, 2).reshape(s["B"], s["T"], s["NH"], s["D"])


def make_impl(name: str, case: Case, dtype) -> Impl:
    """The implementation called ``name`` for ``case`` (raises when its package is missing)."""
    kinds = {"rnnc": Rnnc, "rnnc reference": Rnnc, "torch.nn.LSTM": TorchRnn, "torch.nn.GRU": TorchRnn}
    prefix = {"flashrnn": FlashRnn, "accelerated-scan": AcceleratedScan}
    kind = kinds.get(name) or prefix.get(name.split()[0])
    if kind is None:
        kind = FlaHgrn if name.endswith("hgrn") else FlaChunk
    return kind(name, case, dtype)


def leaves(impl: Impl, args: dict) -> list:
    """The tensors whose gradients fwd+bwd computes: the prepared inputs (and a module's weights)."""
    return impl.leaves(args) if hasattr(impl, "leaves") else list(args.values())


class _NoSleep:
    @staticmethod
    def sleep(seconds):
        return None


def _cat(*parts):
    import torch

    return torch.cat(parts, 0)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def input_sets(set_bytes: int, l2_bytes: int) -> int:
    """How many input sets to rotate through: enough that four L2s' worth pass between reuses, 2 to 8.

    Example:
        >>> input_sets(10 * 2**20, 50 * 2**20), input_sets(2**30, 50 * 2**20)
        (8, 2)
    """
    return max(2, min(8, math.ceil(4 * l2_bytes / max(set_bytes, 1))))
