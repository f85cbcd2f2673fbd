"""The CPU path (the reference backend), forward + backward, one thread, against its anchors.

    python bench/cpu.py [OUT.json] [--smoke] [--only sequential,scan,chunked]

Rows, all in one process, interleaved (each repeat runs every contender once), median of the
repeats, CPU time of this process (``time.process_time``, steadier than wall time on a shared
machine) and wall time:

* sequential (LSTM, GRU; B16 T256 H128): rnnc against ``torch.nn.LSTM`` / ``GRU`` (which also
  apply their input projection: more work than rnnc, which gets it projected) and against a
  hand-written PyTorch loop (one ``F.linear`` per step);
* scan (HGRN, minGRU, Mamba; B4 T512 NH4): rnnc against a plain PyTorch loop (tests/refs/loops.py);
* chunked (GLA, simple GLA, gated DeltaNet; B4 T512 NH4 K=V=64): rnnc against fla's naive
  references (``naive_chunk_*`` where fla-core ships one, else ``naive_recurrent_*``);
* step: host time of one ``Cell.step`` of LSTM (B1 H128) against ``nn.LSTMCell``.

``--smoke`` runs every row once on tiny sizes (what the test suite does); ``--only`` keeps the
named groups of rows. Raw results go to OUT.json (default ``bench/results/cpu.json``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from refs import loops  # noqa: E402

import rnnc  # noqa: E402


def fla_naive(family: str):
    """fla's ``ops/<family>/naive.py`` loaded by path (importing fla.ops imports every Triton kernel)."""
    spec = importlib.util.find_spec("fla")
    if spec is None:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "ops" / family / "naive.py"
    module_spec = importlib.util.spec_from_file_location(f"_bench_fla_{family}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def leaves(*shapes, scale=1.0):
    return [(scale * torch.randn(*s)).requires_grad_() for s in shapes]


def backward_of(fn):
    """fn() returns tensors; the contender runs fn and backpropagates the sum of their squares' means."""

    def run():
        outs = fn()
        sum(o.float().pow(2).mean() for o in outs).backward()

    return run


def cell_fn(name, tensors, state=None):
    cell = rnnc.compile(ROOT / "examples" / f"{name}.rnn", backend="reference")

    def run():
        out = cell(**tensors, state=state)
        return [*out.outputs.values(), *out.state.values()]

    return run


def sequential_rows(s):
    B, T, H = (2, 6, 8) if s else (16, 256, 128)
    rows = []
    for name, gates, module in (("lstm", 4, torch.nn.LSTM), ("gru", 3, torch.nn.GRU)):
        x, R = leaves((B, T, 1, gates, H), (1, gates, H, H), scale=1.0)
        with torch.no_grad():
            R /= math.sqrt(H)
        b = torch.zeros(1, gates, H, requires_grad=True)
        nn_module = module(H, H, batch_first=True)
        xi = torch.randn(B, T, H, requires_grad=True)
        flat_x = x.detach().reshape(B, T, gates * H).requires_grad_()
        W = R.detach().reshape(gates * H, H).clone().requires_grad_()

        def torch_nn(m=nn_module, xi=xi):
            y, _ = m(xi)
            return [y]

        def plain_loop(kind=name, flat_x=flat_x, W=W):
            h = flat_x.new_zeros(B, H)
            c = flat_x.new_zeros(B, H)
            hs = []
            for xt in flat_x.unbind(1):
                if kind == "lstm":
                    i, f, z, o = (xt + F.linear(h, W)).chunk(4, 1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
                    h = torch.sigmoid(o) * torch.tanh(c)
                else:
                    xr, xz, xn = xt.chunk(3, 1)
                    hr, hz, hn = F.linear(h, W).chunk(3, 1)
                    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                    h = (1 - z) * torch.tanh(xn + r * hn) + z * h
                hs.append(h)
            return [torch.stack(hs, 1)]

        contenders = {
            "rnnc": cell_fn(name, {"x": x, "R": R, "b": b}),
            "torch.nn": torch_nn,
            "plain loop": plain_loop,
        }
        rows.append(("sequential", name, f"B{B} T{T} H{H}", contenders))
    return rows


def scan_rows(s):
    B, T, NH, D, N = (2, 6, 2, 4, 3) if s else (4, 512, 4, 64, 16)
    rows = []  # fla's naive_chunk_hgrn reshapes g to one chunk: it only runs T = chunk_size, so no fla row here
    x, graw = leaves((B, T, NH, D), (B, T, NH, D))
    g = F.logsigmoid(graw.detach() + 1).requires_grad_()
    contenders = {
        "rnnc": cell_fn("hgrn", {"x": x, "g": g}),
        "plain loop": lambda: list(loops.hgrn(x, g)[0].values()),
    }
    rows.append(("scan", "hgrn", f"B{B} T{T} NH{NH} D{D}", contenders))
    gz, hc = leaves((B, T, NH, D), (B, T, NH, D))
    contenders = {
        "rnnc": cell_fn("mingru", {"gz": gz, "hc": hc}),
        "plain loop": lambda: list(loops.mingru(gz, hc)[0].values()),
    }
    rows.append(("scan", "mingru", f"B{B} T{T} NH{NH} H{D}", contenders))
    u, Bm, Cm, Dskip = leaves((B, T, NH, D), (B, T, NH, N), (B, T, NH, N), (NH, D))
    dt = F.softplus(torch.randn(B, T, NH, D)).requires_grad_()
    A = (-torch.exp(0.5 * torch.randn(NH, D, N))).requires_grad_()
    tensors = {"u": u, "dt": dt, "B": Bm, "C": Cm, "A": A, "Dskip": Dskip}
    contenders = {
        "rnnc": cell_fn("mamba", tensors),
        "plain loop": lambda: list(loops.mamba(**tensors)[0].values()),
    }
    rows.append(("scan", "mamba", f"B{B} T{T} NH{NH} D{D} N{N}", contenders))
    return rows


def chunked_rows(s):
    B, T, NH, K = (2, 6, 2, 4) if s else (4, 512, 4, 64)
    rows = []
    gla_naive, simple_naive, gdn_naive = fla_naive("gla"), fla_naive("simple_gla"), fla_naive("gated_delta_rule")
    q, k, v = leaves((B, T, NH, K), (B, T, NH, K), (B, T, NH, K))
    with torch.no_grad():
        q /= math.sqrt(K)
        k /= math.sqrt(K)
    g = F.logsigmoid(torch.randn(B, T, NH, K) + 3).requires_grad_()
    contenders = {"rnnc": cell_fn("gla", {"q": q, "k": k, "v": v, "g": g})}
    if gla_naive is not None:  # fla-core 0.6.0 ships no naive_chunk_gla
        contenders["fla naive_recurrent"] = lambda: [gla_naive.naive_recurrent_gla(q, k, v, g)[0]]
    rows.append(("chunked", "gla", f"B{B} T{T} NH{NH} K=V={K}", contenders))
    gs = F.logsigmoid(torch.randn(B, T, NH) + 3).requires_grad_()
    contenders = {"rnnc": cell_fn("simple_gla", {"q": q, "k": k, "v": v, "g": gs})}
    if simple_naive is not None:
        contenders["fla naive_chunk"] = lambda: [simple_naive.naive_chunk_simple_gla(q, k, v, gs)[0]]
    rows.append(("chunked", "simple_gla", f"B{B} T{T} NH{NH} K=V={K}", contenders))
    kn = F.normalize(k.detach(), dim=-1).requires_grad_()
    beta = torch.sigmoid(torch.randn(B, T, NH)).requires_grad_()
    tensors = {"q": q, "k": kn, "v": v, "g": gs, "beta": beta}
    contenders = {"rnnc": cell_fn("gated_deltanet", tensors)}
    if gdn_naive is not None:
        contenders["fla naive_chunk"] = lambda: [gdn_naive.naive_chunk_gated_delta_rule(q, kn, v, gs, beta)[0]]
    rows.append(("chunked", "gated_deltanet", f"B{B} T{T} NH{NH} K=V={K}", contenders))
    return rows


def measure(contenders: dict, repeats: int) -> dict:
    runs = {name: backward_of(fn) for name, fn in contenders.items()}
    for run in runs.values():
        run()  # warm: module loads, allocator
    cpu: dict[str, list] = {n: [] for n in runs}
    wall: dict[str, list] = {n: [] for n in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            c, w = time.process_time(), time.perf_counter()
            run()
            cpu[name].append(1e3 * (time.process_time() - c))
            wall[name].append(1e3 * (time.perf_counter() - w))
    return {n: {"cpu_ms": statistics.median(cpu[n]), "wall_ms": statistics.median(wall[n])} for n in runs}


def step_row(s, repeats: int) -> dict:
    H = 8 if s else 128
    cell = rnnc.compile(ROOT / "examples" / "lstm.rnn", backend="reference")
    x, R, b = torch.randn(1, 1, 4, H), torch.randn(1, 4, H, H) / math.sqrt(H), torch.zeros(1, 4, H)
    state = {"h": torch.zeros(1, 1, H), "c": torch.zeros(1, 1, H)}
    lstm_cell = torch.nn.LSTMCell(H, H)
    xi, hc = torch.randn(1, H), (torch.zeros(1, H), torch.zeros(1, H))
    calls = 20 if s else 500
    results = {}
    with torch.no_grad():
        for name, fn in (
            ("rnnc", lambda: cell.step(x=x, R=R, b=b, state=state)),
            ("torch.nn", lambda: lstm_cell(xi, hc)),
        ):
            fn()
            times = []
            for _ in range(repeats):
                start = time.process_time()
                for _ in range(calls):
                    fn()
                times.append(1e6 * (time.process_time() - start) / calls)
            results[name] = {"cpu_us_per_call": statistics.median(times)}
    return results


def main(argv: list[str]) -> int:
    smoke = "--smoke" in argv
    only = next((a.split("=", 1)[1] for a in argv if a.startswith("--only=")), None)
    if "--only" in argv:
        only = argv[argv.index("--only") + 1]
        argv = [a for i, a in enumerate(argv) if i != argv.index("--only") + 1]
    groups = set(only.split(",")) if only else {"sequential", "scan", "chunked"}
    paths = [a for a in argv if not a.startswith("--")]
    out = Path(paths[0]) if paths else ROOT / "bench" / "results" / "cpu.json"
    torch.set_num_threads(1)
    torch.manual_seed(0)
    repeats = 1 if smoke else 7
    rows = []
    makers = {"sequential": sequential_rows, "scan": scan_rows, "chunked": chunked_rows}
    chosen = [row for group, make in makers.items() if group in groups for row in make(smoke)]
    for group, name, shape, contenders in chosen:
        result = measure(contenders, repeats)
        ours = result["rnnc"]["cpu_ms"]
        ratios = {n: ours / r["cpu_ms"] for n, r in result.items() if n != "rnnc"}
        rows.append({"group": group, "cell": name, "shape": shape, "results": result, "rnnc_over": ratios})
        others = ", ".join(
            f"{n} {r['cpu_ms']:.1f} ms ({ours / r['cpu_ms']:.2f}x)" for n, r in result.items() if n != "rnnc"
        )
        print(f"{group:10s} {name:15s} {shape:24s} rnnc {ours:8.1f} ms | {others}", flush=True)
    step = step_row(smoke, repeats)
    print(
        f"step       lstm            {'B1 H128':24s} rnnc {step['rnnc']['cpu_us_per_call']:.0f} us/call | "
        f"torch.nn LSTMCell {step['torch.nn']['cpu_us_per_call']:.0f} us/call"
    )
    report = {
        "what": "rnnc reference backend on CPU, forward+backward, one thread; medians of interleaved repeats",
        "smoke": smoke,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rows": rows,
        "step": step,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
