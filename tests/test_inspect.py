"""``rnnc inspect``: every kernel a cell would launch, compiled here for a GPU's architecture (no GPU).

One cell per strategy at a benchmark shape for sm_90 in bf16 (issue 12): what the launch records
(the model's tiling for the profile, one launch per step for a split head), what the compiler
reports (registers, stack, shared memory, tensor-core instructions), the table and the JSON.
Zero stack bytes and tensor cores are asserted for one cell of each dot strategy in bf16 (the
templates' 16-bit dot operands, docs/decisions.md, DOT_DTYPE).
"""

import json

import pytest
import torch

import rnnc
from rnnc.cli import main
from rnnc.compiler import analyse_source
from rnnc.runtime.dry_run import record_launches

pytest.importorskip("triton")

SCAN = ("hgrn", {"B": 8, "T": 2048, "NH": 1, "D": 1024})
CHUNKED = ("simple_gla", {"B": 4, "T": 2048, "NH": 16, "K": 128, "V": 128})
SEQUENTIAL = ("lstm", {"B": 16, "T": 1024, "NH": 12, "H": 64})
REPORTS = {}


def plan(name):
    return analyse_source(open(f"examples/{name}.rnn").read())


def report(case, gpu="h100", dtype="bfloat16", precision="ieee"):
    """inspect_cell's report, once per session and case (compiling takes seconds)."""
    from rnnc.inspect import inspect_cell

    key = (case[0], gpu, dtype, precision)
    if key not in REPORTS:
        REPORTS[key] = inspect_cell(plan(case[0]), gpu, case[1], dtype, precision=precision)
    return REPORTS[key]


def test_dry_run_records_each_kernel_with_the_profiles_tiling():
    name, shape = SEQUENTIAL
    cell = rnnc.compile(f"examples/{name}.rnn", backend="triton")
    launches = record_launches(cell._triton, "h100", shape, "bfloat16")
    tiling = cell.tiling(gpu="h100", dtype="bfloat16", **shape).params
    assert [launch.name for launch in launches] == ["forward_kernel", "backward_kernel"]
    for launch in launches:
        assert launch.meta["BLOCK_B"] == tiling["BLOCK_B"] and launch.meta["num_warps"] == tiling["num_warps"]
        assert launch.grid == (1, 12)  # B = 16 in one block of 16, 12 heads
        assert all(a.device.type == "meta" for a in launch.args if isinstance(a, torch.Tensor))


def test_dry_run_of_a_split_head_counts_one_launch_per_step():
    shape = {"B": 16, "T": 64, "NH": 1, "H": 768}
    launches = record_launches(rnnc.compile("examples/lstm.rnn", backend="triton")._triton, "a100", shape, "bfloat16")
    counts = {launch.name: launch.count for launch in launches}
    # the step index is an argument: Triton specialises t = 1 and multiples of 16, so a few signatures
    assert sum(c for n, c in counts.items() if n == "forward_step_kernel") == 64
    assert sum(c for n, c in counts.items() if n == "backward_step_kernel") == 64


def test_float32_dots_take_the_precision_the_cell_was_compiled_with():
    name, shape = SEQUENTIAL
    for precision in ("ieee", "tf32"):
        cell = rnnc.compile(f"examples/{name}.rnn", backend="triton", precision=precision)
        launches = record_launches(cell._triton, "h100", shape, "float32")
        assert {launch.meta["DOT_PRECISION"] for launch in launches} == {precision}
    with pytest.raises(rnnc.RnncError, match="precision needs one of ieee, tf32, has 'fast'"):
        rnnc.compile(f"examples/{name}.rnn", precision="fast")


def test_scan_kernels_compile_for_sm90_without_stack():
    found = report(SCAN)
    assert found.arch == "sm_90" and [k.name for k in found.kernels] == ["forward_kernel", "backward_kernel"]
    for kernel in found.kernels:
        assert kernel.registers and kernel.stack_bytes == 0 and kernel.dots == 0 and kernel.ok
        assert kernel.params["BLOCK_T"] == found.tiling["BLOCK_T"]
        assert kernel.predicted["registers"] > 0 and 0 < kernel.occupancy <= 1


@pytest.mark.parametrize("case", [CHUNKED, SEQUENTIAL], ids=["chunked", "sequential"])
def test_dot_kernels_compile_for_sm90(case):
    found = report(case)
    assert {"forward_kernel", "backward_kernel"} <= {k.name for k in found.kernels}
    for kernel in found.kernels:
        assert kernel.registers is not None and kernel.dots > 0 and kernel.shared_bytes > 0, kernel.notes
        assert kernel.predicted.get("registers", 0) > 0


@pytest.mark.parametrize("case", [CHUNKED, SEQUENTIAL], ids=["chunked", "sequential"])
def test_dot_kernels_use_tensor_cores_without_stack_in_bf16(case):
    found = report(case)
    for kernel in found.kernels:
        assert kernel.tensor_core_instructions > 0, kernel.notes
        assert kernel.stack_bytes == 0, kernel.notes


@pytest.mark.parametrize("cell,gpu", [("gla", "h100"), ("gla", "a100"), ("deltanet", "h100")])
def test_chunked_backward_has_no_stack_at_the_model_tiling(cell, gpu):
    """Per-channel decays (GLA: the pair products back first; before sm_90 also ALIGN) and a correction
    (DeltaNet: keys' row scales on the small side) compile without spills at the benchmark shape."""
    found = report((cell, CHUNKED[1]), gpu=gpu)
    for kernel in found.kernels:
        assert kernel.tensor_core_instructions > 0 and kernel.stack_bytes == 0, (kernel.name, kernel.notes)


def test_float32_with_tf32_uses_tensor_cores():
    """tf32 puts the sequential kernels' float32 dots on tensor cores."""
    found = report(SEQUENTIAL, dtype="float32", precision="tf32")
    for kernel in found.kernels:
        assert kernel.tensor_core_instructions > 0, kernel.notes


def test_mi300x_compiles_without_a_device():
    found = report(SCAN, gpu="mi300x")
    assert found.arch == "gfx942"
    for kernel in found.kernels:
        assert kernel.registers and kernel.stack_bytes == 0


def test_command_line_table_json_and_binaries(tmp_path, capsys):
    name, shape = SCAN
    out = tmp_path / "hgrn.json"
    shape_text = ",".join(f"{k}={v}" for k, v in shape.items())
    args = ["inspect", f"examples/{name}.rnn", "--gpu", "h100", "--shape", shape_text, "--json", str(out), "--check"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "hgrn (scan) on h100 (sm_90), bfloat16" in text and "forward_kernel" in text and "model regs" in text
    data = json.loads(out.read_text())
    assert {"cell", "gpu", "arch", "dtype", "shape", "kernels"} <= set(data)
    assert data["cell"] == "hgrn" and data["arch"] == "sm_90" and data["shape"] == shape
    for kernel in data["kernels"]:
        assert {"name", "params", "registers", "stack_bytes", "shared_bytes", "tensor_core_instructions"} <= set(kernel)
        assert {"registers", "shared_bytes"} <= set(kernel["predicted"])
        assert (tmp_path / kernel["cubin"]).read_bytes()[:4] == b"\x7fELF"  # beside the JSON


def test_command_line_errors_say_what_is_expected(capsys):
    assert main(["inspect", "examples/hgrn.rnn", "--gpu", "h900", "--shape", "B=1,T=8,NH=1,D=16"]) == 1
    assert "unknown GPU 'h900'" in capsys.readouterr().err
    assert main(["inspect", "examples/hgrn.rnn", "--gpu", "h100", "--shape", "B=1,T=8,NH=1"]) == 1
    assert "missing D" in capsys.readouterr().err
    assert main(["inspect", "examples/hgrn.rnn", "--gpu", "h100", "--shape", "B=1,T=8,NH=1,D=16", "--pin", "x"]) == 1
    assert "--pin needs NAME=INTEGER" in capsys.readouterr().err
