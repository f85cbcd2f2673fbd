"""The combine functions of the scan kernels' ``tl.associative_scan``s, as Triton source.

An element is a map of one step. ``combine(x1, x2)`` is "x1, then x2" in the scan's order
(time in the forward kernel, reversed time in the backward one, where Triton's
``reverse=True`` hands the later element first):

* ``_affine{n}``: ``s -> A s + b`` with an n x n matrix ``A`` per channel, entries row-major,
  then the n entries of ``b``: ``(A2 A1, A2 b1 + b2)``. n = 1 is the elementwise scan.
* ``_maxplus``: ``m -> max(m + a, b)``: ``(a1 + a2, max(b1 + a2, b2))``.

The ``_prev`` variants carry a second map beside the running one: the composition of every
element but the last (the identity for a single element). Combining x1 then x2 keeps x1's
full map followed by x2's "all but last" map, which is associative; applied to the carry it
gives each step's previous value (forward) or the next step's cotangent (backward) without
shifting a tile by one step.

Example:
    >>> print(combine_source("affine", 1, previous=False))
    @triton.jit
    def _affine1(a00_1, b0_1, a00_2, b0_2):
        # (x1 then x2): s -> A2 (A1 s + b1) + b2
        return (
            a00_2 * a00_1,
            a00_2 * b0_1 + b0_2,
        )
    <BLANKLINE>
"""

from __future__ import annotations


def combine_name(kind: str, n: int, previous: bool) -> str:
    """The function's name: ``_affine2_prev``, ``_maxplus``...

    Example:
        >>> combine_name("affine", 2, True), combine_name("maxplus", 1, False)
        ('_affine2_prev', '_maxplus')
    """
    base = "_maxplus" if kind == "maxplus" else f"_affine{n}"
    return base + ("_prev" if previous else "")


def combine_source(kind: str, n: int, previous: bool) -> str:
    """The ``@triton.jit`` source of one combine function."""
    name = combine_name(kind, n, previous)
    if kind == "maxplus":
        args = ["a1, b1, p1, q1", "a2, b2, p2, q2"] if previous else ["a1, b1", "a2, b2"]
        body = ["a1 + a2", "tl.maximum(b1 + a2, b2)"] + (["a1 + p2", "tl.maximum(b1 + p2, q2)"] if previous else [])
        comment = "m -> max(m + a, b); the previous map: all but the last step"
        return _function(name, args, comment, body)
    pairs = [(i, j) for i in range(n) for j in range(n)]

    def names(side: int) -> list[str]:
        out = [f"a{i}{j}_{side}" for i, j in pairs] + [f"b{i}_{side}" for i in range(n)]
        if previous:
            out += [f"p{i}{j}_{side}" for i, j in pairs] + [f"q{i}_{side}" for i in range(n)]
        return out

    def product(left: str, right: str, i: int, j: int) -> str:
        return " + ".join(f"{left}{i}{k}_2 * {right}{k}{j}_1" for k in range(n))

    def apply(left: str, i: int, add: str) -> str:
        return " + ".join(f"{left}{i}{k}_2 * b{k}_1" for k in range(n)) + f" + {add}{i}_2"

    body = [product("a", "a", i, j) for i, j in pairs] + [apply("a", i, "b") for i in range(n)]
    if previous:
        body += [product("p", "a", i, j) for i, j in pairs] + [apply("p", i, "q") for i in range(n)]
    comment = "(x1 then x2): s -> A2 (A1 s + b1) + b2" + ("; the previous map P2 (A1 s + b1) + q2" if previous else "")
    return _function(name, [", ".join(names(1)), ", ".join(names(2))], comment, body)


def _function(name: str, args: list[str], comment: str, body: list[str]) -> str:
    head = f"def {name}({', '.join(args)}):"
    if len(head) > 100:  # one line per element
        head = f"def {name}(\n" + "".join(f"    {a},\n" for a in args) + "):"
    lines = ["@triton.jit", head, f"    # {comment}", "    return ("]
    lines += [f"        {b}," for b in body]
    return "\n".join(lines + ["    )", ""])
