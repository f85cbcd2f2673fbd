"""The one place where rnnc reads environment variables (listed in the README).

Example:
    >>> isinstance(debug_level(), int)
    True
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def debug_level() -> int:
    """``RNNC_DEBUG`` as an integer 0..4 (0 when unset or not a number).

    Example:
        >>> 0 <= debug_level() <= 4
        True
    """
    raw = os.environ.get("RNNC_DEBUG", "0").strip()
    try:
        return max(0, min(4, int(raw)))
    except ValueError:
        return 0


def debug(level: int, message: str) -> None:
    """Print ``message`` to stderr, prefixed ``rnnc:``, when ``RNNC_DEBUG`` is at least ``level``.

    Example:
        >>> debug(5, "never shown: RNNC_DEBUG stops at 4")
    """
    if debug_level() >= level:
        print(f"rnnc: {message}", file=sys.stderr)


def triton_interpret() -> bool:
    """Whether ``TRITON_INTERPRET=1`` asks Triton to run kernels on the CPU.

    Example:
        >>> triton_interpret() in (True, False)
        True
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def cache_dir() -> Path:
    """``RNNC_CACHE_DIR``, else the platform's user cache directory for rnnc (``platformdirs``:
    ``$XDG_CACHE_HOME/rnnc`` or ``~/.cache/rnnc`` on Linux, ``~/Library/Caches/rnnc`` on macOS,
    ``%LOCALAPPDATA%\\rnnc\\Cache`` on Windows).

    Example:
        >>> import os
        >>> saved = os.environ.pop("RNNC_CACHE_DIR", None)
        >>> "rnnc" in cache_dir().parts
        True
        >>> _ = saved is None or os.environ.update(RNNC_CACHE_DIR=saved)
    """
    explicit = os.environ.get("RNNC_CACHE_DIR")
    if explicit:
        return Path(explicit)
    import platformdirs

    return Path(platformdirs.user_cache_dir("rnnc", appauthor=False))


def use_triton_interpreter() -> None:
    """Ask Triton to run kernels on the CPU from now on (``rnnc demo`` on a machine without a GPU).

    Only kernels defined after the call are interpreted, so call it before compiling cells.

    Example:
        >>> import os
        >>> saved = os.environ.get("TRITON_INTERPRET")
        >>> use_triton_interpreter(); triton_interpret()
        True
        >>> _ = os.environ.pop("TRITON_INTERPRET") if saved is None else os.environ.update(TRITON_INTERPRET=saved)
    """
    os.environ["TRITON_INTERPRET"] = "1"


def child_environment(**overrides: str) -> dict[str, str]:
    """This process's environment with ``overrides``, for a child process (``rnnc inspect`` compiles in one
    when Triton was imported for its interpreter). ``PYTHONPATH`` overrides are prepended, not replaced.

    Example:
        >>> child_environment(TRITON_INTERPRET="0")["TRITON_INTERPRET"]
        '0'
    """
    env = dict(os.environ)
    for name, value in overrides.items():
        if name == "PYTHONPATH" and env.get(name):
            value = os.pathsep.join([value, env[name]])
        env[name] = value
    return env
