"""The state dependency graph of a cell and its strongly connected components, in order.

``s -> t`` when the update of ``t`` reads ``s``, its previous value or its new one. The
components come out in topological order; among components that could go next, the one with
the first-declared state goes first, so the order is deterministic. Each component's updates
are given in the nested form over the *marked* IR (``IR.marked``): a read of a state after its
update is the symbol ``s'``. Within a component, the new values of its own states are inlined
(a component is analysed in its own states' previous values); the new values of other
components' states stay symbols.

Example:
    >>> from rnnc.compiler import lower_source
    >>> ir = lower_source("cell c(H) { input x: [H]; state a: [H]; state b: [H]; a = 0.5 * a + b; b = b + x }")
    >>> [c.states for c in decompose(ir)]
    [('b',), ('a',)]
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from rnnc.compiler.ir import IR
from rnnc.compiler.nested import nest
from rnnc.compiler.symbols import tensor_symbol


@dataclass(frozen=True)
class Group:
    """The states of one component and their updates (nested, own new values inlined)."""

    states: tuple[str, ...]
    updates: dict[str, sympy.Expr]


def marked_updates(ir: IR) -> dict[str, sympy.Expr]:
    """Each state's update in the nested form of the marked IR (new values as ``s'``).

    Example:
        >>> from rnnc.compiler import lower_source
        >>> ir = lower_source(open("examples/lstm.rnn").read())
        >>> "c'" in str(marked_updates(ir)["h"])
        True
    """
    marked = ir.marked if ir.marked is not None else ir
    return {d.name: nest(marked, marked.update(d.name).expr) for d in ir.states}


def marked_outputs(ir: IR) -> dict[str, sympy.Expr]:
    """Each output in the nested form of the marked IR.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> marked_outputs(lower_source(open("examples/hgrn.rnn").read()))
        {'h': h'}
    """
    marked = ir.marked if ir.marked is not None else ir
    known = {u: tensor_symbol(s + "'") for g in decompose(ir) for s, u in g.updates.items() if u.args}
    return {o.name: nest(marked, o.expr).xreplace(known) for o in marked.outputs}


def reads_of(expr: sympy.Expr, states: list[str]) -> set[str]:
    """The states whose previous or new value ``expr`` reads.

    Example:
        >>> sorted(reads_of(tensor_symbol("a") + tensor_symbol("b'"), ["a", "b", "c"]))
        ['a', 'b']
    """
    names = {s.name for s in expr.free_symbols}
    return {s for s in states if s in names or s + "'" in names}


def decompose(ir: IR) -> list[Group]:
    """The components of the cell's states, in topological order.

    Example:
        >>> from rnnc.compiler import lower_source
        >>> [g.states for g in decompose(lower_source(open("examples/slstm.rnn").read()))]
        [('h', 'c', 'n', 'm')]
    """
    order = [d.name for d in ir.states]
    updates = marked_updates(ir)
    edges = {t: reads_of(updates[t], order) for t in order}  # t reads each s in edges[t]
    components = _strongly_connected(order, edges)
    groups, known = [], {}
    for states in _topological(components, edges, order):
        own = _inline_own(states, updates, order)
        # an earlier state's update spelled out again (a local holding it) is its new value
        groups.append(Group(states, {s: u.xreplace(known) for s, u in own.items()}))
        known.update({u: tensor_symbol(s + "'") for s, u in own.items() if u.args})
    return groups


def _strongly_connected(order: list[str], edges: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """Tarjan's algorithm without recursion; states of a component in declaration order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[tuple[str, ...]] = []
    rank = {s: i for i, s in enumerate(order)}
    for root in order:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root], key=rank.get)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child], key=rank.get))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    members.append(top)
                    if top == node:
                        break
                found.append(tuple(sorted(members, key=rank.get)))
    return found


def _topological(components, edges, order) -> list[tuple[str, ...]]:
    """Components so that each comes after every component it reads; first-declared first."""
    rank = {s: i for i, s in enumerate(order)}
    owner = {s: i for i, c in enumerate(components) for s in c}
    needs = {i: {owner[s] for t in c for s in edges[t]} - {i} for i, c in enumerate(components)}
    done: list[int] = []
    while len(done) < len(components):
        ready = [i for i in range(len(components)) if i not in done and needs[i] <= set(done)]
        done.append(min(ready, key=lambda i: rank[components[i][0]]))
    return [components[i] for i in done]


def _inline_own(states: tuple[str, ...], updates: dict[str, sympy.Expr], order: list[str]) -> dict[str, sympy.Expr]:
    """The component's updates with its own states' new values replaced by their updates.

    A state's update reads only the new values of states updated before it in the step, so
    resolving them in statement order terminates.
    """
    marker = {tensor_symbol(s + "'"): s for s in states}
    resolved: dict[str, sympy.Expr] = {}
    pending = list(states)
    while pending:
        progress = False
        for s in list(pending):
            expr = updates[s]
            needed = [marker[m] for m in expr.free_symbols if m in marker]
            if all(n in resolved for n in needed):
                resolved[s] = expr.xreplace({tensor_symbol(n + "'"): resolved[n] for n in needed})
                pending.remove(s)
                progress = True
        if not progress:  # pragma: no cover - the language orders updates, so this cannot loop
            raise AssertionError(f"updates of {pending} read each other's new values")
    return {s: resolved[s] for s in states}
