"""The ``rnnc`` command line, run as a user runs it: ``python -m rnnc.cli ...`` in a subprocess.

Each run costs a Python start-up with sympy (about two seconds), so every command the tests
need is started once, all of them concurrently, by the module fixture ``runs``; the tests then
read the results.
"""

import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import TWO_CELLS
from conftest import ZOO as CLASSIC

ROOT = Path(__file__).resolve().parent.parent
ZOO = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.rnn"))  # every example checks ok


SEMANTIC = "cell c(H) {\n    input x: [H]\n    state h: [H]\n    h = h + y\n}\n"  # y is undefined
DEEP = "cell c(H) {\n    input x: [H]\n    state h: [H]\n    h = " + "(" * 10_000 + "h" + ")" * 10_000 + "\n}\n"


def bad_files(folder: Path) -> dict[str, tuple[Path, str | None]]:
    """name -> (path, expected FILE:LINE:COL or None where the error has no location)."""
    junk = b"\xff\xfe\x00\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(500)
    files = {
        "junk": ("junk.rnn", junk, "1:1"),
        "empty": ("empty.rnn", b"", None),
        "deep": ("deep.rnn", DEEP.encode(), "4:73"),
        "semantic": ("semantic.rnn", SEMANTIC.encode(), "4:13"),
    }
    out = {}
    for name, (filename, data, where) in files.items():
        path = folder / filename
        path.write_bytes(data)
        out[name] = (path, f"{path}:{where}" if where else None)
    out["missing"] = (folder / "does-not-exist.rnn", None)
    return out


def rnnc(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnnc.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    two = folder / "two.rnn"
    two.write_text(TWO_CELLS)
    return {"two": two, "bad": bad_files(folder)}


@pytest.fixture(scope="module")
def runs(files):
    bad = files["bad"]
    commands = {
        "check-zoo": ["check", *ZOO],
        "check-mixed": ["check", "examples/gla.rnn", bad["semantic"][0], "examples/hgrn.rnn", bad["missing"][0]],
        "explain-lstm": ["explain", "examples/lstm.rnn"],
        "explain-gla": ["explain", "examples/gla.rnn"],
        "explain-hgrn": ["explain", "examples/hgrn.rnn"],
        "check-two": ["check", files["two"]],
        "explain-two": ["explain", files["two"]],
        "explain-two-squash": ["explain", files["two"], "--cell", "squash"],
        "explain-two-unknown": ["explain", files["two"], "--cell", "nope"],
        "explain-semantic": ["explain", bad["semantic"][0]],
        **{f"check-{name}": ["check", path] for name, (path, _) in bad.items()},
    }
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {name: pool.submit(rnnc, *args) for name, args in commands.items()}
        return {name: future.result() for name, future in futures.items()}


def both(result) -> str:
    return result.stdout + result.stderr


def assert_no_traceback(result):
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, both(result)
    assert "internal error" not in both(result), both(result)


# --------------------------------------------------------------------------- check


def test_check_zoo_is_ok_with_one_line_per_file(runs):
    result = runs["check-zoo"]
    assert result.returncode == 0, both(result)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == len(ZOO), result.stdout
    for path, line in zip(ZOO, lines):
        stem = Path(path).stem
        assert re.fullmatch(rf"{re.escape(path)}: ok: cell {stem} \((sequential|scan|chunked)\)", line), line


def test_check_reports_the_expected_strategies(runs):
    out = runs["check-zoo"].stdout
    assert "cell lstm (sequential)" in out
    assert "cell hgrn (scan)" in out
    assert "cell gla (chunked)" in out
    assert "cell mamba (scan)" in out


def test_check_a_two_cell_file_names_both(runs, files):
    result = runs["check-two"]
    assert result.returncode == 0, both(result)
    assert result.stdout.strip() == f"{files['two']}: ok: cell acc (scan), cell squash (sequential)"


BAD = ["junk", "empty", "deep", "missing", "semantic"]


@pytest.mark.parametrize("name", BAD)
def test_check_a_bad_file_exits_1_without_a_traceback(runs, files, name):
    result = runs[f"check-{name}"]
    assert result.returncode == 1, both(result)
    assert_no_traceback(result)
    assert result.stdout == "", result.stdout  # nothing reported ok
    path, _ = files["bad"][name]
    assert str(path) in result.stderr, result.stderr  # the message names the file


@pytest.mark.parametrize(
    "name",
    [
        "junk",
        "empty",
        "deep",
        "missing",
        "semantic",
    ],
)
def test_check_a_bad_file_says_error(runs, name):
    result = runs[f"check-{name}"]
    assert "error" in result.stderr, result.stderr


@pytest.mark.parametrize("name", ["junk", "deep", "semantic"])
def test_check_a_bad_file_gives_file_line_col_and_a_caret(runs, files, name):
    result = runs[f"check-{name}"]
    _, where = files["bad"][name]
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{where}: error: "), result.stderr
    assert "^" in result.stderr, result.stderr


def test_check_messages_say_what_is_wrong(runs):
    assert "UTF-8" in runs["check-junk"].stderr
    assert "nested deeper than 64" in runs["check-deep"].stderr
    assert "undefined name 'y'" in runs["check-semantic"].stderr
    assert "cannot read" in runs["check-missing"].stderr
    assert "cell" in runs["check-empty"].stderr


def test_check_deep_nesting_shows_a_short_excerpt(runs):
    # the offending line is 20,000 characters; the excerpt is a window around the fault
    assert max(len(line) for line in runs["check-deep"].stderr.splitlines()) < 200


def test_check_several_files_one_bad(runs, files):
    result = runs["check-mixed"]
    assert result.returncode == 1, both(result)
    assert_no_traceback(result)
    assert result.stdout.splitlines() == [
        "examples/gla.rnn: ok: cell gla (chunked)",
        "examples/hgrn.rnn: ok: cell hgrn (scan)",
    ]
    assert f"{files['bad']['semantic'][0]}:4:13: error: undefined name 'y'" in result.stderr
    assert str(files["bad"]["missing"][0]) in result.stderr


def test_check_without_files_is_a_usage_error():
    result = rnnc("check")
    assert result.returncode == 2, both(result)
    assert "usage" in result.stderr and "Traceback" not in both(result)


# --------------------------------------------------------------------------- explain


def test_explain_lstm_names_the_nonlinear_term(runs):
    result = runs["explain-lstm"]
    assert result.returncode == 0, both(result)
    out = result.stdout
    assert out.startswith("cell lstm(H): strategy sequential"), out
    assert "sigmoid" in out and "sequential" in out
    assert "not affine" in out and "nonlinear" in out


def test_explain_gla_is_chunked_diagonal_and_verified(runs):
    result = runs["explain-gla"]
    assert result.returncode == 0, both(result)
    out = result.stdout
    assert "chunked" in out and "diagonal" in out and "verified" in out, out


def test_explain_hgrn_is_a_scan(runs):
    result = runs["explain-hgrn"]
    assert result.returncode == 0, both(result)
    assert "scan" in result.stdout and "verified" in result.stdout, result.stdout


def test_explain_a_two_cell_file_prints_both(runs):
    result = runs["explain-two"]
    assert result.returncode == 0, both(result)
    assert "cell acc(H): strategy scan" in result.stdout
    assert "cell squash(H): strategy sequential" in result.stdout


def test_explain_cell_prints_only_that_cell(runs):
    result = runs["explain-two-squash"]
    assert result.returncode == 0, both(result)
    out = result.stdout
    assert out.startswith("cell squash(H): strategy sequential"), out
    assert "tanh" in out
    assert "acc" not in out and "strategy scan" not in out, out


def test_explain_unknown_cell_exits_1_with_a_clear_message(runs, files):
    result = runs["explain-two-unknown"]
    assert result.returncode == 1, both(result)
    assert_no_traceback(result)
    assert result.stdout == ""
    err = result.stderr
    assert "error" in err and "'nope'" in err and str(files["two"]) in err, err
    assert "acc" in err and "squash" in err, err  # lists what the file defines


def test_explain_a_bad_file_exits_1_with_a_location(runs, files):
    result = runs["explain-semantic"]
    assert result.returncode == 1, both(result)
    assert_no_traceback(result)
    assert result.stderr.startswith(f"{files['bad']['semantic'][0]}:4:13: error: "), result.stderr


def test_build_writes_deterministic_modules_and_check_finds_edits(tmp_path):
    from rnnc.cli import main

    out = tmp_path / "kernels"
    assert main(["build", "examples/hgrn.rnn", "examples/mingru.rnn", "-o", str(out)]) == 0
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == ["hgrn.py", "mingru.py"]
    assert main(["build", "examples/hgrn.rnn", "examples/mingru.rnn", "-o", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first  # byte-identical
    assert main(["build", "examples/hgrn.rnn", "examples/mingru.rnn", "-o", str(out), "--check"]) == 0
    (out / "hgrn.py").write_text((out / "hgrn.py").read_text() + "# edited\n")
    assert main(["build", "examples/hgrn.rnn", "-o", str(out), "--check"]) == 1
    (out / "mingru.py").unlink()
    assert main(["build", "examples/mingru.rnn", "-o", str(out), "--check"]) == 1


def test_build_says_which_cells_have_no_template_yet(tmp_path, capsys):
    from rnnc.cli import main

    cell = tmp_path / "odd.rnn"  # an axis of size H * K: no tile of the sequential template covers it
    cell.write_text("cell odd(H, K) { input x: [H*K]; state h: [H*K]\nh = tanh(x + h)\nemit h }")
    assert main(["build", str(cell), "-o", str(tmp_path / "out")]) == 1
    assert "sequential template does not cover cell odd" in capsys.readouterr().err


def test_demo_runs_cells_on_triton_and_checks_them(tmp_path, capsys, monkeypatch):
    from rnnc import demo
    from rnnc.cli import main

    odd = tmp_path / "odd.rnn"  # no template covers it (an axis of size H * K): reported, not failed
    odd.write_text("cell odd(H, K) { input x: [H*K]; state h: [H*K]\nh = tanh(x + h)\nemit h }")
    assert main(["demo", "examples/hgrn.rnn", "examples/elman.rnn", str(odd)]) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line for line in table.splitlines()[3:-1]}
    assert set(rows) == {"hgrn", "elman", "odd"}
    assert rows["hgrn"].split()[1:3] == ["scan", "triton"] and rows["hgrn"].endswith("ok")
    assert rows["elman"].split()[1:3] == ["sequential", "triton"] and rows["elman"].endswith("ok")
    assert rows["odd"].split()[1:3] == ["sequential", "reference"]
    assert "reference only: " in rows["odd"] and "sequential template does not cover cell odd" in rows["odd"]
    assert "1 cell(s) run on the reference only" in table.splitlines()[-1]
    monkeypatch.setitem(demo.TOLERANCE, "float32", 0.0)  # every real error now exceeds it: the check can fail
    assert main(["demo", "examples/hgrn.rnn"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_demo_reports_a_template_crash_as_an_error(capsys, monkeypatch):
    """A generated module that does not import is rnnc's bug: the row says so and the demo fails."""
    import rnnc
    from rnnc.cli import main

    compile_for_real = rnnc.compile

    def broken_templates(src, **kwargs):
        if kwargs.get("backend") == "triton":
            raise SyntaxError("invalid syntax (hgrn_scan.py, line 3)")
        return compile_for_real(src, **kwargs)

    monkeypatch.setattr(rnnc, "compile", broken_templates)
    assert main(["demo", "examples/hgrn.rnn"]) == 1
    row = capsys.readouterr().out.splitlines()[3]
    assert row.split()[0] == "hgrn" and "ERROR" in row
    assert "internal error generating the Triton kernels: SyntaxError" in row


def test_demo_draws_cells_written_for_a_domain_inside_it(capsys):
    """HGRN2's lower bound, KDA's decay in (0, 1), energy_norm's positive normaliser: the rows pass."""
    from rnnc.cli import main

    cells = ["examples/hgrn2.rnn", "examples/kda.rnn", "examples/energy_norm.rnn"]
    assert main(["demo", "--dtype", "float64", *cells]) == 0
    rows = capsys.readouterr().out.splitlines()[3:-1]
    assert sum(row.endswith("ok") for row in rows) == 3, rows


def test_demo_bundles_the_zoo():
    from rnnc.demo import bundled_cells

    assert {p.stem for p in bundled_cells()} >= {"lstm", "gru", "slstm", "gla", "deltanet", "mamba", "hgrn"}


def test_build_is_byte_identical_across_processes_with_different_hash_seeds(tmp_path):
    """Sets iterate in hash order, and str hashes change with PYTHONHASHSEED: output must not depend on it."""
    zoo = [f"examples/{cell}.rnn" for cell in CLASSIC]  # the cells every template covers
    texts = []
    for seed in ("1", "2"):
        out = tmp_path / f"seed{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-m", "rnnc.cli", "build", *zoo, "-o", str(out)], env=env, check=True)
        texts.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert len(texts[0]) == len(zoo) and texts[0] == texts[1]
