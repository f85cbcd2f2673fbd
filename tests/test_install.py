"""What a new user meets first: the version, a CPU compile that never imports triton, the cache
directory, and a README whose links point at files in the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import rnnc
from rnnc import config

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )


def test_version_on_the_command_line():
    run = subprocess.run([sys.executable, "-m", "rnnc.cli", "--version"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"rnnc {rnnc.__version__}"


def test_a_cpu_compile_and_call_never_import_triton():
    code = (
        "import sys, torch, rnnc, rnnc.nn\n"
        "assert not torch.cuda.is_available()\n"
        "cell = rnnc.compile('examples/lstm.rnn')\n"
        "out = cell(x=torch.randn(2, 3, 1, 4, 5), R=torch.zeros(1, 4, 5, 5), b=torch.zeros(1, 4, 5))\n"
        "layer = rnnc.nn.Layer('examples/gla.rnn', d_model=8, num_heads=2, dims={'K': 4, 'V': 4})\n"
        "layer(torch.randn(2, 3, 8))[0].sum().backward()\n"
        "print(cell.last_backend, 'triton' in sys.modules)\n"
    )
    run = _python(code, CUDA_VISIBLE_DEVICES="")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["reference", "False"]


def test_cache_directory_is_the_platforms_unless_set(monkeypatch, tmp_path):
    monkeypatch.setenv("RNNC_CACHE_DIR", str(tmp_path))
    assert config.cache_dir() == tmp_path
    monkeypatch.delenv("RNNC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert config.cache_dir() == tmp_path / "xdg" / "rnnc"


def test_readme_links_only_files_in_the_repository():
    text = (ROOT / "README.md").read_text()
    assert "shared/design" not in text
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert targets, "the README links the language reference and the decisions"
    for target in targets:
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target
    assert "docs/language.md" in targets
