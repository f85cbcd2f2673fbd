"""The cache of generated modules: atomic writes, corrupt entries rewritten, concurrent writers, and
(issue 14) what runs is the generated text itself: no bytecode trusted, no file read after the check."""

import importlib.util
import inspect
import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rnnc.runtime.modules import load_module, module_path, write_module

TEXT = "VALUE = 6 * 7\n" + "# padding to make the write take a moment\n" * 20000


def test_same_text_same_file_and_module(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    assert write_module(TEXT, "answer") == write_module(TEXT, "answer")
    assert load_module(TEXT, "answer").VALUE == 42
    assert module_path(TEXT, "answer") != module_path(TEXT + "# other\n", "answer")


def test_corrupt_entry_is_rewritten_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    path = write_module("VALUE = 1\n", "corrupt")
    path.write_text("VALUE = 2  # someone edited the cache\n")
    assert write_module("VALUE = 1\n", "corrupt") == path
    assert path.read_text() == "VALUE = 1\n"


def test_two_processes_writing_the_same_module_at_once(tmp_path):
    script = (
        "import sys; from rnnc.runtime.modules import load_module\n"
        "from test_modules import TEXT\n"
        "for _ in range(20):\n"
        "    assert load_module(TEXT, 'race').VALUE == 42\n"
    )
    here = os.path.dirname(__file__)
    env = {
        **os.environ,
        "RNNC_CACHE_DIR": str(tmp_path),
        "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    runs = [subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err.decode()
    files = list((tmp_path / "modules").iterdir())
    assert [f.read_text() for f in files if f.suffix == ".py"] == [TEXT]  # one intact file, no leftovers
    assert not [f for f in files if f.name.startswith(".tmp-")]


# --- what runs is the text rnnc generated (issue 14, item 3) ------------------------------------


def _pyc_for(path, text: str) -> bytes:
    """A .pyc of ``text`` with the header importlib checks against ``path`` (magic, mtime, size)."""
    stat = path.stat()
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    header += (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    return header + marshal.dumps(compile(text, str(path), "exec"))


@pytest.mark.parametrize("kind", ["planted", "truncated"])
def test_a_pyc_beside_a_module_is_never_read(kind, tmp_path, monkeypatch):
    """A .pyc with the real header (what importlib would run instead of the file), or a truncated one
    (on which importlib raised EOFError at every later compile)."""
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    text = f"VALUE = 'generated {kind}'\n"
    path = write_module(text, kind)
    pyc = importlib.util.cache_from_source(str(path))
    os.makedirs(os.path.dirname(pyc), exist_ok=True)
    planted = _pyc_for(path, "VALUE = 'planted'\n")
    with open(pyc, "wb") as f:
        f.write(planted if kind == "planted" else planted[:20])
    assert load_module(text, kind).VALUE == f"generated {kind}"


def test_no_bytecode_is_written_for_generated_modules(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # Python's default; this machine's shell sets it
    load_module("VALUE = 3\n", "nobytecode")
    assert not any(p.suffix == ".pyc" for p in tmp_path.rglob("*"))


def test_a_file_rewritten_after_it_was_checked_does_not_run(tmp_path, monkeypatch):
    """Another process rewrites the cached file between rnnc's check of its text and its execution."""
    from rnnc.runtime import modules

    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    checked = modules.write_module

    def then_rewritten(text, stem):
        path = checked(text, stem)
        path.write_text("VALUE = 'rewritten'\n")
        return path

    monkeypatch.setattr(modules, "write_module", then_rewritten)
    assert load_module("VALUE = 'checked'\n", "race_rewrite").VALUE == "checked"


KERNEL = """import triton
import triton.language as tl


@triton.jit
def add_one(x_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) + 1, mask=i < n)
"""


def test_triton_reads_the_generated_text_not_the_file(tmp_path, monkeypatch):
    """inspect (and so Triton, which reads kernels' source) sees the text rnnc generated, even after
    the file on disk changed; the kernel still launches (in the interpreter here)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    module = load_module(KERNEL, "kernel_source")
    Path(module.__file__).write_text(KERNEL.replace("+ 1", "+ 100"))
    assert "+ 1, mask" in inspect.getsource(module.add_one.fn) and "+ 100" not in inspect.getsource(module.add_one.fn)
    x = torch.zeros(5) if os.environ.get("TRITON_INTERPRET") == "1" else torch.zeros(5, device="cuda")
    module.add_one[(1,)](x, 5, BLOCK=8)
    assert x.tolist() == [1.0] * 5


def test_a_directory_at_the_module_path_falls_back_and_leaks_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    text = "VALUE = 'beside a directory'\n"
    module_path(text, "blocked").mkdir(parents=True)
    module = load_module(text, "blocked")
    assert module.VALUE == "beside a directory"
    assert Path(module.__file__).read_text() == text and not Path(module.__file__).is_relative_to(tmp_path)
    assert not list((tmp_path / "modules").glob(".tmp-*"))


def test_a_cache_that_cannot_be_written_falls_back(tmp_path, monkeypatch):
    """RNNC_CACHE_DIR naming a file: no modules directory can be made there (this fails as root too)."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv("RNNC_CACHE_DIR", str(blocker))
    module = load_module("VALUE = 'elsewhere'\n", "unwritable")
    assert module.VALUE == "elsewhere" and Path(module.__file__).read_text() == "VALUE = 'elsewhere'\n"


def test_a_read_only_cache_falls_back_and_leaks_nothing(tmp_path, monkeypatch):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories: see the test of a cache that cannot be written")
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules").chmod(0o500)
    try:
        module = load_module("VALUE = 'read-only'\n", "readonly")
        assert module.VALUE == "read-only"
        assert not list((tmp_path / "modules").iterdir())
    finally:
        (tmp_path / "modules").chmod(0o700)


def test_a_module_runs_when_no_copy_can_be_written_anywhere(tmp_path, monkeypatch):
    from rnnc.runtime import modules

    monkeypatch.setattr(modules, "_write_atomically", lambda text, path: (_ for _ in ()).throw(OSError("disk full")))
    module = load_module("def f():\n    return 'from memory'\n", "nowhere")
    assert module.f() == "from memory" and "return 'from memory'" in inspect.getsource(module.f)
