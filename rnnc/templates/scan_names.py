"""Identifiers of a generated scan module: readable, and never two things under one name.

A cell's own names (inputs, weights, states, outputs, dims) reach the kernels with a prefix
(``x_u`` is input ``u``'s tile), and the kernels have names of their own (``row``, ``lane``,
``mask_t``). A user's ``t`` or ``lane_x`` must not become one of those: every identifier is
asked for here, by what it stands for, and a name already taken gets a numbered suffix. Asking
again for the same thing gives the same name, so one allocator serves a whole module.

Example:
    >>> names = Identifiers(reserved=["row", "mask_t"])
    >>> names.get(("mask", "t"), "mask_t"), names.get(("input", "u"), "x_u"), names.get(("mask", "t"), "mask_t")
    ('mask_t_2', 'x_u', 'mask_t_2')
"""

from __future__ import annotations

# names every scan kernel uses for itself (and Python's and Triton's own)
FIXED = (
    "tl", "triton", "pid", "pid_bh", "b", "h", "lane", "t0", "t", "k", "n_chunks", "last", "row", "bos", "T_b",
    "mask_t", "T", "NH", "COMPUTE", "BLOCK_T", "STORE_STATES", "VARLEN", "seq_starts", "float", "range",
)  # fmt: skip


class Identifiers:
    """Allocates identifiers: ``get(key, preferred)`` is ``preferred`` unless something else has it."""

    def __init__(self, reserved=FIXED):
        self._taken: set[str] = set(reserved)
        self._given: dict[object, str] = {}

    def get(self, key, preferred: str) -> str:
        """The identifier of ``key``: ``preferred``, or ``preferred_2``, ``preferred_3``... if taken.

        Example:
            >>> names = Identifiers()
            >>> names.get("a", "row"), names.get("b", "row"), names.get("a", "other")
            ('row_2', 'row_3', 'row_2')
        """
        if key in self._given:
            return self._given[key]
        name, count = preferred, 1
        while name in self._taken:
            count += 1
            name = f"{preferred}_{count}"
        self._taken.add(name)
        self._given[key] = name
        return name
