"""Shared test setup: run from the repository root so examples/ paths resolve."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
ZOO = sorted(p.stem for p in EXAMPLES.glob("*.rnn"))


@pytest.fixture(autouse=True, scope="session")
def _at_repository_root():
    previous = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(previous)
