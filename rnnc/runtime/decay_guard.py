"""Decays taken on trust: the chunked forms take the log of each decay, so a decay the analysis could
not prove positive (``rnnc.compiler.decay``) is checked on the call's values before they run.

A decay of zero is a reset (its log is -inf, handled by the kernels); a negative one has no real
log. Where one occurs, the reference backend runs its plain loop (exact for any decay) and the
Triton backend refuses the call with a ValueError that names the decay (docs/decisions.md,
"Decays the analysis cannot prove positive").

Example:
    >>> import torch
    >>> from rnnc.compiler import analyse_source
    >>> from rnnc.templates.chunked_spec import stage_spec
    >>> guard = DecayGuard(stage_spec(analyse_source(open("examples/hgrn2.rnn").read())))
    >>> guard.checks
    ['S: -lb*sigmoid(fx) + lb + sigmoid(fx)']
    >>> x = {"q": torch.randn(1, 4, 1, 3), "fx": torch.randn(1, 4, 1, 3), "i": torch.randn(1, 4, 1, 2)}
    >>> guard.first_negative({**x, "lb": torch.full((1, 3), 0.5)}, {"K": 3, "V": 2}) is None
    True
    >>> guard.first_negative({**x, "lb": torch.full((1, 3), -0.5)}, {"K": 3, "V": 2})
    'S: -lb*sigmoid(fx) + lb + sigmoid(fx)'
"""

from __future__ import annotations

import sympy
import torch

from rnnc.compiler.decay import is_positive
from rnnc.runtime.modules import load_module
from rnnc.runtime.torch_printer import to_torch
from rnnc.templates.chunked_spec import ChunkedSpec


def unproved_decays(spec: ChunkedSpec) -> list[tuple[str, sympy.Expr, str]]:
    """(state, decay, space) of every decay whose log the kernels take without a proof it is positive.

    Example:
        >>> from rnnc.compiler import analyse_source
        >>> from rnnc.templates.chunked_spec import stage_spec
        >>> unproved_decays(stage_spec(analyse_source(open("examples/gla.rnn").read())))
        []
    """
    found = []
    for s in spec.states:
        for step in s.steps:
            if step.log_decay is None:
                continue
            space = "key" if step.decay == "diagonal" else "scalar"
            for log in sorted(step.log_decay.atoms(sympy.log), key=sympy.default_sort_key):
                if not is_positive(log.args[0]):
                    found.append((s.name, log.args[0], space))
    return found


class DecayGuard:
    """Evaluates a chunked stage's unproved decays on a call's leaves (rnnc layouts) and finds negative ones."""

    def __init__(self, spec: ChunkedSpec, pieces=None):
        from rnnc.runtime.chunked_torch import leaf_names

        self.spec = spec
        self._pieces = pieces  # the stage's ChunkedTorch (made when first needed)
        decays = unproved_decays(spec)
        self.checks = [f"{state}: {decay}" for state, decay, _ in decays]
        self._evaluate = None
        reductions = {r.symbol for r in spec.reductions}
        # the in-step reductions (P) are computed only when a decay reads one
        self._reads_pieces = any(decay.free_symbols & reductions for _, decay, _ in decays)
        if decays:
            lines = ["import torch", "import torch.nn.functional as F", "from rnnc.runtime import ops", ""]
            lines.append("def decays(L, P, dims):")
            items = ", ".join(to_torch(decay, leaf_names(spec, space, False)) for _, decay, space in decays)
            lines.append(f"    return [{items}]")
            self._evaluate = vars(load_module("\n".join(lines) + "\n", f"{spec.cell}_decay_guard"))["decays"]

    def first_negative(self, leaves: dict, dims: dict) -> str | None:
        """The first decay (as ``state: expression``) with a negative value at this call, or None.

        ``leaves`` are the stage's leaves in rnnc's layouts. Meta tensors (a dry run) have no values and
        are not checked.
        """
        if self._evaluate is None:
            return None
        if any(isinstance(x, torch.Tensor) and x.device.type == "meta" for x in leaves.values()):
            return None
        if self._pieces is None:
            from rnnc.runtime.chunked_torch import ChunkedTorch

            self._pieces = ChunkedTorch(self.spec)
        with torch.no_grad():
            L, sizes, like, _ = self._pieces.layout(leaves, dims)
            P = self._pieces.pieces(L, sizes, dims, like) if self._reads_pieces else {}
            return self.negative(L, P, self._pieces.numbers(dims, like))

    def negative(self, L: dict, P: dict, numbers: dict) -> str | None:
        """The first decay with a negative value, from leaves and pieces already in the pieces' layout."""
        if self._evaluate is None:
            return None
        with torch.no_grad():
            for label, value in zip(self.checks, self._evaluate(L, P, numbers)):
                value = torch.as_tensor(value)
                if value.device.type != "meta" and bool((value < 0).any()):  # a dry run's have no values
                    return label
        return None

    def refuse(self, leaves: dict, dims: dict) -> None:
        """A ValueError naming the first negative decay of this call, if any (the Triton backend's check)."""
        found = self.first_negative(leaves, dims)
        if found is not None:
            raise ValueError(
                f"cell {self.spec.cell}: the chunked kernels take the log of the decay of {found}, which needs "
                "positive values, has a negative one at this call (the analysis could not prove it positive); "
                "write the decay so it is positive (e.g. through sigmoid or exp) or run backend='reference'"
            )
