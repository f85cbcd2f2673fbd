"""The cache of generated modules: atomic writes, corrupt entries rewritten, concurrent writers."""

import os
import subprocess
import sys

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
