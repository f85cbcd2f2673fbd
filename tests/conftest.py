"""Shared test setup: run from the repository root so examples/ paths resolve."""

import os
from pathlib import Path

import pytest

# Without a GPU, Triton kernels run in its interpreter; this must be set before triton is imported.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# the classic zoo: every template covers these, so the Triton, demo and build tests run over them
ZOO = [
    "deltanet",
    "elman",
    "gated_deltanet",
    "gla",
    "gru",
    "hgrn",
    "linear_attention",
    "lstm",
    "lti",
    "mamba",
    "mingru",
    "retnet",
    "simple_gla",
    "slstm",
]
# cells from recent papers (and a few of rnnc's own), written as the papers write them; their
# oracles are tests/refs/paper_loops*.py, the strategy each should get is tests/test_components_expected.py
PAPER_CELLS = [
    "aaren",
    "cema",
    "delta_monitor",
    "deltanet_l2",
    "deltanet_square",
    "eagle",
    "ema_gla",
    "energy_norm",
    "expgate",
    "gated_accumulator",
    "gated_deltanet_decay_first",
    "gated_deltaproduct",
    "hedgehog",
    "hgrn2",
    "indrnn",
    "kda",
    "ligru",
    "linear_attention_normalised",
    "linoss",
    "lmu",
    "longhorn",
    "lru",
    "m2rnn",
    "mamba2",
    "mamba2_ssd",
    "mega_ema",
    "minlstm",
    "mlstm",
    "mlstm_plain",
    "ntm_memory",
    "qrnn",
    "rglru",
    "rwkv4",
    "rwkv6",
    "rwkv7",
    "s4d",
    "sru",
    "sru_2018",
    "tanh_accumulator",
    "titans",
    "ttt_linear",
]

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
