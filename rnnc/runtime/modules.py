"""Generated modules: run from the text rnnc generated, with a copy in the cache for people and tools.

Triton reads a kernel's source with ``inspect``. The module is compiled from its text in memory
and executed into a fresh module object registered under a stable name; the text is registered
with ``linecache`` under the module's file name, which is where ``inspect`` (and so Triton) looks
first. What runs is therefore exactly the text rnnc generated: no ``.pyc`` is read or written for
it (a planted or truncated one is ignored), and a file rewritten on disk after rnnc wrote it
changes nothing.

The file itself is a readable copy: written once, atomically, into ``$RNNC_CACHE_DIR/modules/``,
named by a hash of its text, rewritten when its text does not match (corrupt). When the cache
cannot take it (a directory in the way, a read-only cache), the copy goes to a temporary
directory of this process instead; when that fails too, the module runs without a copy.

Example:
    >>> module = load_module("VALUE = 41 + 1\\n", "demo")
    >>> module.VALUE
    42
"""

from __future__ import annotations

import atexit
import hashlib
import linecache
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from rnnc import config

_fallback_dir: Path | None = None  # this process's directory for copies the cache cannot take


def module_path(text: str, stem: str) -> Path:
    """Where the module with this text lives in the cache.

    Example:
        >>> module_path("x = 1\\n", "demo").name.startswith("demo_")
        True
    """
    return config.cache_dir() / "modules" / _file_name(text, stem)


def _file_name(text: str, stem: str) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()[:20]
    return f"{stem}_{digest}.py"


def _write_atomically(text: str, path: Path) -> Path:
    """Write ``text`` to ``path`` unless an intact copy is there (OSError if it cannot); no temporary file stays."""
    try:
        if path.is_file() and path.read_text() == text:
            return path
    except (OSError, UnicodeDecodeError):
        pass  # unreadable: (re)write it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)  # atomic: another process sees the old file or the whole new one
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)  # the replace failed (a directory at the path, say): leave nothing behind
    return path


def write_module(text: str, stem: str) -> Path | None:
    """Write ``text``'s copy into the cache, else into this process's temporary directory; return its path.

    None when neither can take it (the module then runs without a copy on disk).

    Example:
        >>> write_module("x = 1\\n", "demo").read_text()
        'x = 1\\n'
    """
    try:
        return _write_atomically(text, module_path(text, stem))
    except OSError:
        pass  # a directory at the path, a read-only cache, a full disk: a fresh place, this process's own
    try:
        return _write_atomically(text, _process_dir() / _file_name(text, stem))
    except OSError:
        return None


def _process_dir() -> Path:
    global _fallback_dir
    if _fallback_dir is None:
        _fallback_dir = Path(tempfile.mkdtemp(prefix="rnnc-modules-"))
        atexit.register(shutil.rmtree, _fallback_dir, ignore_errors=True)
    return _fallback_dir


def load_module(text: str, stem: str) -> ModuleType:
    """The module of ``text``: compiled from the text itself and registered; the same text gives the same
    module object.

    Example:
        >>> import inspect
        >>> module = load_module("def f():\\n    return 1\\n", "demo_source")
        >>> inspect.getsource(module.f)
        'def f():\\n    return 1\\n'
    """
    return _load(text, stem, "rnnc_generated")


def load_compiled_module(text: str, stem: str) -> ModuleType:
    """The same generated module loaded for compiling to a GPU (``triton.jit`` as on a GPU) even
    when ``TRITON_INTERPRET=1`` makes ordinary loads build interpreter kernels.

    Example:
        >>> import triton
        >>> text = "import triton\\n@triton.jit\\ndef k(x_ptr):\\n    pass\\n"
        >>> isinstance(load_compiled_module(text, "demo").k, triton.runtime.JITFunction)
        True
    """
    import triton

    with triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = False
        return _load(text, stem, "rnnc_compiled")


def _load(text: str, stem: str, package: str) -> ModuleType:
    """Compile ``text`` into the module ``package.STEM_DIGEST`` once (a failed load leaves nothing behind)."""
    name = f"{package}.{_file_name(text, stem)[:-3]}"
    if name in sys.modules:
        return sys.modules[name]
    path = write_module(text, stem)
    filename = str(path) if path is not None else f"<rnnc generated {name}>"
    code = compile(text, filename, "exec", dont_inherit=True)  # the text itself: no file, no bytecode is read
    # inspect (and so Triton) reads a function's source through linecache; an entry without an mtime is
    # never checked against the file, so it is this text whatever happens to the file later
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    module = ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    return module
