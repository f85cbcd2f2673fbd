"""A solved tiling: the chosen parameters at once, the runners-up and binding constraints when first asked for.

The optimum is one solve; the runners-up are one more solve each and the binding constraints one
re-solve per constraint, so they are computed only when ``candidates`` or ``binding`` is read
(``rnnc tune`` and ``explain`` read them; a kernel launch does not).

Example:
    >>> t = Tiling("c", "scan", "h100", "float32", {"B": 1}, {"BLOCK_T": 16}, 1.0, (), (), {})
    >>> Tiling.from_json(t.to_json()) == t
    True
    >>> found = {"candidates": (({"BLOCK_T": 32}, 2.0),), "binding": ("a constraint",)}
    >>> later = Tiling("c", "scan", "h100", "float32", {"B": 1}, {"BLOCK_T": 16}, 1.0, later=found.get)
    >>> later.computed("binding"), later.binding, later.computed("binding")
    (False, ('a constraint',), True)
"""

from __future__ import annotations

import json
from typing import Callable

FIELDS = ("cell", "strategy", "gpu", "dtype", "shape", "params", "estimate_us", "candidates", "binding", "quantities")
FIELDS += ("built",)


class Tiling:
    """The chosen launch and tile parameters, the cost model's estimate and (lazily) the runners-up.

    ``launch_params`` are what the kernels that exist are launched with: ``params``, or ``built``
    when ``params`` need a variant not built yet. ``later(what)`` computes what was not given, for
    ``what`` in ``"candidates"`` (an iterable of ``({params}, estimate_us)``, best first) and
    ``"binding"`` (descriptions of the constraints that limit the optimum).
    """

    def __init__(
        self,
        cell: str,
        strategy: str,
        gpu: str,
        dtype: str,
        shape: dict,
        params: dict,
        estimate_us: float,
        candidates: tuple | None = None,
        binding: tuple | None = None,
        quantities: dict | None = None,
        built: dict | None = None,
        *,
        later: Callable[[str], object] | None = None,
    ):
        self.cell, self.strategy, self.gpu, self.dtype = cell, strategy, gpu, dtype
        self.shape, self.params, self.estimate_us = dict(shape), dict(params), float(estimate_us)
        self.quantities = dict(quantities or {})
        # when params need a kernel variant not built yet: the tiling of the built kernels that breaks the
        # budgets least, which is what the launchers run meanwhile (None when params are built kernels')
        self.built = None if built is None else dict(built)
        self._known = {"candidates": candidates, "binding": binding}
        self._later = later

    def _get(self, what: str) -> tuple:
        if self._known[what] is None:
            self._known[what] = tuple(self._later(what)) if self._later is not None else ()
        return self._known[what]

    @property
    def launch_params(self) -> dict:
        """The parameters the existing kernels launch with (``built`` when ``params`` are not built yet)."""
        return dict(self.built if self.built is not None else self.params)

    @property
    def candidates(self) -> tuple:
        """The solver's next best tilings, ``({params}, estimate_us)``, best first."""
        return self._get("candidates")

    @property
    def binding(self) -> tuple:
        """Descriptions of the constraints without which the optimum would be strictly better."""
        return self._get("binding")

    def fill(self, what: str, value: tuple | None) -> None:
        """Set ``candidates`` or ``binding`` (None: to be computed when next read)."""
        self._known[what] = None if value is None else tuple(value)

    def computed(self, what: str) -> bool:
        """Whether ``candidates`` or ``binding`` is known yet (without computing it)."""
        return self._known[what] is not None

    def to_dict(self, complete: bool = True) -> dict:
        """The tiling as JSON data; ``complete=False`` leaves what is not computed yet as null."""
        data = {name: getattr(self, name) for name in FIELDS if name not in ("candidates", "binding")}
        for what in ("candidates", "binding"):
            data[what] = list(self._get(what)) if complete or self.computed(what) else None
        return data

    def to_json(self, complete: bool = True) -> str:
        """Deterministic JSON (sorted keys)."""
        return json.dumps(self.to_dict(complete), sort_keys=True, indent=1)

    @staticmethod
    def from_json(text: str, later: Callable[[str], object] | None = None) -> "Tiling":
        """The inverse of :meth:`to_json`; null runners-up or binding constraints are left to ``later``."""
        data = json.loads(text)
        candidates, binding = data.pop("candidates"), data.pop("binding")
        return Tiling(
            **{k: data[k] for k in FIELDS if k in data},
            candidates=None if candidates is None else tuple((dict(p), float(e)) for p, e in candidates),
            binding=None if binding is None else tuple(binding),
            later=later,
        )

    def __eq__(self, other) -> bool:
        return isinstance(other, Tiling) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return f"Tiling({self.cell}, {self.strategy}, {self.gpu}, {self.dtype}, params={self.params})"

    def explain(self) -> str:
        """The decision as text: parameters, estimate, binding constraints, runners-up."""
        shape = ", ".join(f"{k}={v}" for k, v in self.shape.items())
        lines = [f"tiling of {self.cell} ({self.strategy}) on {self.gpu}, {self.dtype}, {shape}:"]
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in self.params.items()))
        if self.built is not None:
            shown = ", ".join(f"{k}={v}" for k, v in self.built.items())
            lines.append(f"  (a kernel variant not built yet; the existing kernels launch with {shown})")
        lines.append(f"  estimated time: {self.estimate_us:.1f} us (cost model)")
        lines += [f"  {k}: {v}" for k, v in self.quantities.items()]
        lines.append("binding constraints (the optimum would improve without them):")
        lines += [f"  {b}" for b in self.binding] or ["  none: the objective alone decided"]
        if self.candidates:
            lines.append("next best:")
            for params, estimate in self.candidates:
                lines.append(f"  {estimate:10.1f} us  " + ", ".join(f"{k}={v}" for k, v in params.items()))
        return "\n".join(lines)
