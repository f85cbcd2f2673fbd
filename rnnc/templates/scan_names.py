"""Identifiers of a generated scan module: the cell's names by :mod:`rnnc.templates.names`, the rest its own.

An identifier that carries a cell's name (input ``u``'s tile, state ``S``'s carry, dim ``D``
read as a number) is ``names.derived(ROLE, user=name)``: injective, and never equal to a
variable of the template's own. The template's own variables are fixed words (``row``,
``lane``), positional names (``i_ax0``, ``mask_ax0_ax1``) or numbered temporaries (``r_0``,
``gt_3``), none of which parses to a role that carries a cell's name (``tests/test_names.py``
checks that). The reductions hoisted before the kernel (``pre_0``) are tensors rnnc made, not
the cell: their identifiers put the role after the name (``pre_0_x``), a shape no cell name
can produce.

Example:
    >>> names = Identifiers(hoisted={"pre_0"})
    >>> names.tensor("x", "u"), names.tensor("x", "x_0"), names.tensor("x", "g", gate=1), names.tensor("x", "pre_0")
    ('x_u', 'x_x__0', 'x_g_1', 'pre_0_x')
    >>> names.own("temporary", "gt"), names.own("temporary", "gt")
    ('gt_0', 'gt_1')
"""

from __future__ import annotations

from rnnc.templates.names import derived

# names every scan kernel uses for itself (and Python's and Triton's own)
FIXED = (
    "tl", "triton", "pid", "pid_bh", "b", "h", "lane", "t0", "t", "k", "n_chunks", "last", "row", "bos", "T_b",
    "mask_t", "T", "NH", "COMPUTE", "BLOCK_T", "STORE_STATES", "VARLEN", "seq_starts", "float", "range",
)  # fmt: skip


class Identifiers:
    """The identifiers of one generated module: ``tensor`` for what carries a cell's name, ``own`` for the rest."""

    def __init__(self, hoisted=(), reserved=FIXED):
        self.hoisted = set(hoisted)
        self._taken: set[str] = set(reserved)
        self._count: dict[str, int] = {}

    def tensor(self, role: str, name: str, gate: int | None = None, placement: int = 0) -> str:
        """The identifier of role ``role`` (words joined by ``_``) for tensor ``name``: a part's index as
        the gate, a second placement of a leaf as one more role word (``x_p1_u``).

        Example:
            >>> Identifiers().tensor("d_in", "u"), Identifiers().tensor("x", "u", placement=1)
            ('d_in_u', 'x_p1_u')
        """
        words = [*role.split("_"), *([f"p{placement}"] if placement else [])]
        if name in self.hoisted:
            return "_".join([name, *(w.lower() for w in words), *([str(gate)] if gate is not None else [])])
        return derived(*words, user=name, gate=gate)

    def own(self, kind: str, stem: str) -> str:
        """A fresh variable of the template's own: ``stem_<n>``, numbered per ``kind`` (never a cell's name).

        Example:
            >>> names = Identifiers()
            >>> names.own("reduction", "r"), names.own("reduction", "r"), names.own("other", "c")
            ('r_0', 'r_1', 'c_0')
        """
        count = self._count.get(kind, 0)
        self._count[kind] = count + 1
        name = f"{stem}_{count}"
        while name in self._taken:  # pragma: no cover - numbered names never meet the fixed ones
            count += 1
            name = f"{stem}_{count}"
        self._taken.add(name)
        return name
