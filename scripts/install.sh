#!/usr/bin/env bash
# Installs rnnc and its test extras into the current Python.
# torch is pinned first: an unpinned resolve would pull a multi-GB CUDA build.
# The third-party references (FlashRNN, flash-linear-attention) go in with
# --no-deps so they bring neither another torch nor Triton kernels we import.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -e ".[test]"
python -m pip install --quiet --disable-pip-version-check --no-deps "flashrnn==1.0.8" "fla-core==0.6.0"
