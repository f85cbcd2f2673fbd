"""The compiler: lowering to the IR and the sympy analysis that yields a Plan.

Example:
    >>> lower_source(open("examples/hgrn.rnn").read()).cell
    'hgrn'
"""

from rnnc.compiler.ir import IR, Atom, Declared, Result
from rnnc.compiler.lower import lower, lower_source, pick_cell

__all__ = ["IR", "Atom", "Declared", "Result", "lower", "lower_source", "pick_cell"]

from rnnc.compiler.plan import Plan, analyse, analyse_source  # noqa: E402

__all__ += ["Plan", "analyse", "analyse_source"]
