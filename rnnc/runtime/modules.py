"""Generated modules as files: written once, atomically, into the cache, and imported from there.

Triton reads a kernel's source with ``inspect``, so generated code must live in a
file. The file name carries a hash of its text: an entry whose text does not
hash to its name is corrupt, and is rewritten rather than trusted.

Example:
    >>> module = load_module("VALUE = 41 + 1\\n", "demo")
    >>> module.VALUE
    42
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from rnnc import config


def module_path(text: str, stem: str) -> Path:
    """Where the module with this text lives in the cache.

    Example:
        >>> module_path("x = 1\\n", "demo").name.startswith("demo_")
        True
    """
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return config.cache_dir() / "modules" / f"{stem}_{digest}.py"


def write_module(text: str, stem: str) -> Path:
    """Write ``text`` to its cache path unless an intact copy is there; return the path."""
    path = module_path(text, stem)
    try:
        if path.read_text() == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: (re)write it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # atomic: another process sees the old file or the whole new one
    return path


def load_module(text: str, stem: str) -> ModuleType:
    """Write (if needed) and import a generated module; the same text gives the same module object."""
    path = write_module(text, stem)
    name = f"rnnc_generated.{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
