#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (Python 3.12, manylinux x86_64, --no-deps):
# it cannot reach a package registry, and already has torch 2.11, triton 3.6, sympy, jinja2, numpy,
# pandas, absl-py, typing-extensions, einops, ninja, packaging and matplotlib
# (/work/.library/device/KINDS.md). What travels:
#
#   lark, ortools     rnnc's own needs (parser; CP-SAT for the tiling model, which runs on every GPU call)
#   protobuf, immutabledict   ortools' needs (ortools 9.15 pins protobuf >= 6.33.1, < 6.34)
#   flashrnn          FlashRNN (LSTM, sLSTM, GRU): pure Python, JIT-compiles its CUDA kernels with nvcc there
#   fla-core          flash-linear-attention's kernels (GLA, simple GLA, DeltaNet, gated DeltaNet, HGRN)
#   accelerated-scan  first-order linear scans (warp-level CUDA and Triton kernels)
#
# Run from anywhere: bash bench/wheels.sh. It adds /.whl/ to .git/info/exclude so the wheels are
# never committed, and prints their sizes (everything sent to the device must stay under 64 MiB).
# The GPU session's command line is in bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

EXCLUDE="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$EXCLUDE")"
touch "$EXCLUDE"
grep -qxF '/.whl/' "$EXCLUDE" || echo '/.whl/' >>"$EXCLUDE"

# One version of each: two versions of one package stop the whole install on the device.
PACKAGES=(lark==1.3.1 ortools==9.15.6755 protobuf==6.33.6 immutabledict==4.3.1
    flashrnn==1.0.8 fla-core==0.6.0 accelerated-scan==0.3.1)

mkdir -p .whl
for spec in "${PACKAGES[@]}"; do
    name="${spec%%==*}"
    stem="${name//-/_}"
    rm -f .whl/"${stem}"-*.whl
    python3 -m pip download -q --no-deps --disable-pip-version-check --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec" 2>&1 |
        { grep -v 'is ignored: it is neither a file nor a directory' || true; }
done

echo "wheels in .whl/ (their needs beyond the device's packages: see Requires-Dist):"
for wheel in .whl/*.whl; do
    printf '  %-60s %s\n' "$(basename "$wheel")" "$(du -h "$wheel" | cut -f1)"
    unzip -p "$wheel" '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/      /' || true
done
du -sh .whl
