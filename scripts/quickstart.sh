#!/usr/bin/env bash
# The main job on a fresh machine: install, check the zoo, explain a cell, run it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
rnnc check examples/*.rnn
rnnc explain examples/gated_deltanet.rnn
python examples/run_lstm.py
