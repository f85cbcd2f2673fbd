"""Identifiers of generated code that carry a user's name: collision-free by construction.

Every backend writes Python source (Triton kernels, the reference's PyTorch steps) in
which the cell's names (inputs, weights, states, outputs, dims) become parts of
variables: ``x_x_0`` for gate 0 of input ``x``, ``mask_H`` for dim ``H``. Written ad hoc,
two of them can meet (gate 0 of ``x`` and an input called ``x_0``), or meet a variable of
the template's own (a dim ``b`` and the batch mask ``mask_b``), and the kernel then runs
silently wrong. This module is the one place such identifiers are made.

**The scheme.** An identifier that carries a user name is
``ROLE_TOKEN`` or ``ROLE_TOKEN_GATE``:

- ``ROLE``: one or more fixed *role words* joined by ``_`` (``x``, ``mask``, ``init_ptr``);
  each word is ``[A-Za-z][A-Za-z0-9]*``, so a role never holds ``__``;
- ``TOKEN``: the user's name with every ``_`` doubled, and ``0`` in front when the name
  starts with ``_`` (``x_0`` -> ``x__0``, ``_h`` -> ``0__h``); so a token never holds a
  single ``_`` and never starts with one;
- ``GATE``: optionally, a gate index in decimal (no leading zeros).

The map from (role, name, gate) to identifier is injective: read left to right, a run
of ``n`` underscores is ``n // 2`` underscores of a token and, when ``n`` is odd, one
separator after them; that splits an identifier into its words and tokens in one way
only, the last word that is not all digits is the token, and digits after it are the
gate. And such an identifier never equals a variable of a template's own as long as no
fixed variable has the *shape* ``ROLE_WORD`` or ``ROLE_WORD_GATE`` for a role some
identifier of that module uses: ``mask_b`` cannot be a template's variable where dims
get ``mask_<dim>``, ``batch_mask`` can. ``tests/test_names.py`` checks both properties on
every strategy's generated modules (:func:`parse` tells the shapes apart).

Templates call :func:`derived` for every identifier that carries a user name (or
:func:`prefixed` to put one more role word in front of such an identifier), pick their own
variables' names so that they fail :func:`parse` or parse to a role no derived identifier
uses, and pass user text into comments only through :func:`comment`.

Symbols of sympy expressions that a template invents for itself (a gradient tile, a
marker) are named with :func:`internal`, which no user name can equal.

Example:
    >>> derived("x", user="x", gate=0), derived("x", user="x_0"), derived("mask", user="b")
    ('x_x_0', 'x_x__0', 'mask_b')
    >>> parse("x_x__0")
    Derived(role=('x',), user='x_0', gate=None)
    >>> parse("x_x_0"), parse("rows")
    (Derived(role=('x',), user='x', gate=0), None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_GATE = re.compile(r"(0|[1-9][0-9]*)\Z")


@dataclass(frozen=True)
class Derived:
    """What an identifier of the shape ``ROLE_TOKEN[_GATE]`` says: its role words, user name and gate."""

    role: tuple[str, ...]
    user: str
    gate: int | None = None


def token(name: str) -> str:
    """The token a user name becomes inside identifiers: ``_`` doubled, ``0`` before a leading ``_``.

    Example:
        >>> token("h"), token("x_0"), token("_h"), token("a__")
        ('h', 'x__0', '0__h', 'a____')
    """
    if not _NAME.match(name):
        raise ValueError(f"a user name must be an identifier [A-Za-z_][A-Za-z0-9_]*, has {name!r}")
    doubled = name.replace("_", "__")
    return "0" + doubled if name.startswith("_") else doubled


def untoken(text: str) -> str | None:
    """The user name a token stands for, or None if no name gives this token.

    Example:
        >>> untoken("x__0"), untoken("0__h"), untoken("x_0"), untoken("0h")
        ('x_0', '_h', None, None)
    """
    name = (text[1:] if text.startswith("0") else text).replace("__", "_")
    return name if _NAME.match(name) and token(name) == text else None


def derived(*role: str, user: str, gate: int | None = None) -> str:
    """The identifier of role ``role`` for the user name ``user`` (and gate ``gate``).

    The role is given as words, or as words joined by single underscores (``"init_ptr"`` is
    ``"init", "ptr"``).

    Example:
        >>> derived("init", "ptr", user="h"), derived("init_ptr", user="h"), derived("acc", "r", user="R", gate=3)
        ('init_ptr_h', 'init_ptr_h', 'acc_r_R_3')
    """
    words = [w for part in role for w in part.split("_")]
    if not words:
        raise ValueError("a derived identifier needs at least one role word")
    for word in words:
        if not _WORD.match(word):
            raise ValueError(f"a role word must be [A-Za-z][A-Za-z0-9]*, has {word!r}")
    parts = [*words, token(user)]
    if gate is not None:
        if not isinstance(gate, int) or isinstance(gate, bool) or gate < 0:
            raise ValueError(f"a gate index must be an int >= 0, has {gate!r}")
        parts.append(str(gate))
    return "_".join(parts)


def prefixed(word: str, identifier: str) -> str:
    """``identifier`` with one more role word in front (the cotangent ``d_`` of a tile, say).

    For a derived identifier the result is derived with the longer role; for a template's own
    variable it stays one.

    Example:
        >>> prefixed("d", derived("x", user="x", gate=1)), parse(prefixed("d", "x_x_1"))
        ('d_x_x_1', Derived(role=('d', 'x'), user='x', gate=1))
    """
    if not _WORD.match(word):
        raise ValueError(f"a role word must be [A-Za-z][A-Za-z0-9]*, has {word!r}")
    return f"{word}_{identifier}"


def _split(identifier: str) -> list[str] | None:
    """The words and tokens of an identifier (tokens still escaped), or None if it has no such split."""
    pieces, current, i = [], "", 0
    while i < len(identifier):
        if identifier[i] != "_":
            current += identifier[i]
            i += 1
            continue
        j = i
        while j < len(identifier) and identifier[j] == "_":
            j += 1
        run = j - i
        current += "_" * (run - run % 2)
        if run % 2:
            if not current:
                return None
            pieces.append(current)
            current = ""
        i = j
    if not current:
        return None
    pieces.append(current)
    return pieces


def parse(identifier: str) -> Derived | None:
    """Read ``identifier`` as ``ROLE_TOKEN[_GATE]``; None when it has no such shape.

    A template's own variable may parse (``batch_mask`` reads as role ``batch``, name ``mask``);
    what matters is that no *derived* identifier of the same module has that role.

    Example:
        >>> parse("acc_r_R_3"), parse("rows"), parse("a4_2")
        (Derived(role=('acc', 'r'), user='R', gate=3), None, None)
    """
    pieces = _split(identifier)
    if pieces is None or len(pieces) < 2:
        return None
    gate = None
    if _GATE.match(pieces[-1]) and len(pieces) >= 3:
        gate = int(pieces.pop())
    *role, last = pieces
    user = untoken(last)
    if user is None or not all(_WORD.match(w) for w in role):
        return None
    return Derived(tuple(role), user, gate)


def internal(label: str) -> str:
    """The name of a sympy symbol a template invents (a gradient tile, a marker): no user name equals it.

    Example:
        >>> internal("d_query")
        '@d_query'
    """
    return "@" + label


def comment(text: str) -> str:
    """User text (a cell's expression, say) made safe for a one-line comment of generated code.

    Control characters (a newline would end the comment, a NUL byte stops Python from compiling
    the module) become ``?``, as error excerpts show them.

    Example:
        >>> comment("R @ (h # note\\x00)")
        'R @ (h # note?)'
    """
    return "".join(ch if ch.isprintable() else "?" for ch in text)
