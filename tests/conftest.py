"""Shared test setup: run from the repository root so examples/ paths resolve."""

import os
from pathlib import Path

import pytest

# Without a GPU, Triton kernels run in its interpreter; this must be set before triton is imported.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ZOO = sorted(p.stem for p in EXAMPLES.glob("*.rnn"))

# one file, two cells: used by the API and CLI tests
TWO_CELLS = """\
cell acc(H) {
    input x: [H]
    state h: [H]
    h = h + x
    emit h
}

cell squash(H) {
    input x: [H]
    state h: [H]
    h = tanh(h + x)
    emit y = 2 * h
}
"""


@pytest.fixture(autouse=True, scope="session")
def _at_repository_root():
    previous = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches (tilings, later kernels) go to a fresh folder, never the user's."""
    previous = os.environ.get("RNNC_CACHE_DIR")
    os.environ["RNNC_CACHE_DIR"] = str(tmp_path_factory.mktemp("rnnc-cache"))
    yield
    if previous is None:
        os.environ.pop("RNNC_CACHE_DIR", None)
    else:
        os.environ["RNNC_CACHE_DIR"] = previous
