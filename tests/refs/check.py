"""Comparison helpers shared by the reference tests (and usable by rnnc's own tests)."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / max(||a||, ||b||) in float64; 0 when both are zero."""
    a, b = a.detach().double(), b.detach().double()
    den = max(a.norm().item(), b.norm().item())
    return 0.0 if den == 0.0 else (a - b).norm().item() / den


def functional_weights(outputs: dict, finals: dict, seed: int) -> dict:
    """Random cotangents for every output and final state: the linear functional
    L = sum_k <W_k, Y_k> whose gradient the tests compare."""
    gen = torch.Generator().manual_seed(seed)
    w = {}
    for kind, d in (("out", outputs), ("state", finals)):
        for name, t in d.items():
            w[(kind, name)] = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    return w


def functional_grads(outputs: dict, finals: dict, leaves: dict, weights: dict) -> dict:
    """Gradients of L = sum <W, Y> w.r.t. every leaf that requires grad (zeros if unused)."""
    total = 0
    for (kind, name), w in weights.items():
        y = (outputs if kind == "out" else finals)[name]
        total = total + (w.to(y.dtype) * y).sum()
    names = [n for n, t in leaves.items() if t.requires_grad]
    grads = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, grads)}


def compare(res_a, res_b, leaves: dict, tol: float, seed: int = 0, grads: bool = True, grad_tols: dict | None = None):
    """Compare two ``(outputs, final_states)`` results and the gradients of a random linear
    functional of them w.r.t. ``leaves`` (``grad_tols`` overrides ``tol`` per leaf name).
    Returns a list of failure lines (empty: they agree)."""
    (out_a, fin_a), (out_b, fin_b) = res_a, res_b
    bad = []
    if set(out_a) != set(out_b) or set(fin_a) != set(fin_b):
        return [f"keys differ: {sorted(out_a)}/{sorted(fin_a)} vs {sorted(out_b)}/{sorted(fin_b)}"]
    for kind, da, db in (("output", out_a, out_b), ("final state", fin_a, fin_b)):
        for name in da:
            if da[name].shape != db[name].shape:
                bad.append(f"{kind} {name}: shape {tuple(da[name].shape)} vs {tuple(db[name].shape)}")
                continue
            e = rel_err(da[name], db[name])
            if not e <= tol:
                bad.append(f"{kind} {name}: rel err {e:.3e} > {tol:.0e}")
    if grads and not bad:
        w = functional_weights(out_a, fin_a, seed)
        ga = functional_grads(out_a, fin_a, leaves, w)
        gb = functional_grads(out_b, fin_b, leaves, w)
        for name in ga:
            e = rel_err(ga[name], gb[name])
            t = (grad_tols or {}).get(name, tol)
            if not e <= t:
                bad.append(f"grad {name}: rel err {e:.3e} > {t:.0e}")
    return bad
