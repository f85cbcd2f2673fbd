"""bench/cpu.py runs every row on tiny sizes (``--smoke``) and writes its JSON report."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cpu_bench_smoke(tmp_path):
    out = tmp_path / "cpu.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cpu.py"), str(out), "--smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    cells = {row["cell"] for row in report["rows"]}
    assert {"lstm", "gru", "hgrn", "mingru", "mamba", "gla", "simple_gla", "gated_deltanet"} <= cells
    for row in report["rows"]:
        assert row["results"]["rnnc"]["cpu_ms"] > 0 and row["rnnc_over"], row
    assert report["step"]["rnnc"]["cpu_us_per_call"] > 0
