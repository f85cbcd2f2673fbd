"""Loading the Jinja templates that ship in this package, with the settings every strategy uses.

Example:
    >>> template("scan.py.jinja") is template("scan.py.jinja")
    True
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2


def _read(name: str) -> str:
    return resources.files("rnnc.templates").joinpath(name).read_text()


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_read),  # {% include %} finds the other templates of the package
        undefined=jinja2.StrictUndefined,  # a name the renderer forgot to pass is an error, not ""
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
    )


def template(name: str) -> jinja2.Template:
    """The package's template ``name`` (parsed once per process).

    Example:
        >>> template("sequential.py.jinja").name
        'sequential.py.jinja'
    """
    return _environment().get_template(name)
