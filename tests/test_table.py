"""Results tables: every cell is a run folder on disk; rendering reads them back; runs resume."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tune_distill.cli import main
from tune_distill.core.errors import UserError
from tune_distill.recipe.table import load_table

SPEC = {
    "name": "tiny",
    "ipc": [1],
    "seeds": [0, 1],
    "protocol": {"val_size": 5000, "eval_split": "test", "eval_test_size": 200, "eval_models": 1,
                 "eval_epochs": 3, "eval_width": 16},
    "rows": [
        {"id": "baseline-random-real", "label": "baseline: random real", "preset": "quick", "set": {"init": "real", "iterations": 0},
         "paper": {1: 61.0}},
        {"id": "tiny-distill", "label": "tiny distill", "preset": "quick", "set": {"iterations": 2, "batch_real": 8, "width": 8}},
    ],
}


def _write(tmp_path, spec):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_table_runs_cells_once_and_renders_from_disk(tmp_path, mnist_dir, capsys):
    spec = _write(tmp_path, SPEC)
    data = ["--data-dir", str(mnist_dir)] if mnist_dir else []
    assert main(["table", str(spec), "--storage", str(tmp_path), *data]) == 0
    cells = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("tiny/*/ipc1/seed*/metrics.json"))
    assert cells == [f"tiny/{row}/ipc1/seed{s}/metrics.json" for row in ("baseline-random-real", "tiny-distill")
                     for s in (0, 1)]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("tiny/*/ipc1/seed*/metrics.json")}
    first, err = capsys.readouterr()
    assert "| baseline: random real |" in first and "| 61.0 |" in first
    # Each cell says what it runs before it runs (its folder appears only when it ends), and a
    # distilling cell shows its progress.
    logged = [ln.split(" | seed ")[1].split()[1] for ln in first.splitlines() if " | seed " in ln]
    assert [w if w == "running" else "%" for w in logged] == ["running", "%"] * 4, first
    assert "running 1 classifiers x 3 epochs" in first and "running 2 iterations, then 1 classifiers" in first
    assert "distilling" in err and "2/2" in err
    # A second call finds every cell on disk: nothing reruns, the same table comes out.
    assert main(["table", str(spec), "--storage", str(tmp_path), *data]) == 0
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert capsys.readouterr().out.splitlines()[:4] == [ln for ln in first.splitlines() if ln.startswith("|")][:4]
    table = (tmp_path / "tiny" / "table.md").read_text()
    assert table.count("\n") == 4 and "± " in table
    # The manifest beside the tables lists every cell, with what it is and its score.
    entries = json.loads((tmp_path / "index.json").read_text())
    assert [(e["id"], e["kind"]) for e in entries] == [("baseline-random-real", "selection")] * 2 + \
        [("tiny-distill", "distilled")] * 2
    assert all(e["scores"]["paper/convnet"]["runs"] == 1 for e in entries)
    accuracy = {(e["id"], e["seed"]): 100 * json.loads((tmp_path / e["path"] / "metrics.json").read_text())["acc_mean"]
                for e in entries}
    # With a reference row, each row's gain over it: the difference of their means over seeds.
    spec = _write(tmp_path, {**SPEC, "reference": "baseline-random-real"})
    assert main(["table", str(spec), "--storage", str(tmp_path), "--no-run"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| tiny distill |"))
    gain = sum(accuracy["tiny-distill", s] - accuracy["baseline-random-real", s] for s in (0, 1)) / 2
    assert row.split(" | ")[3] == f"{gain:+.2f}"
    # A cell re-scored under another protocol gets a column of its own, saying what it rests on,
    # with its gain over the reference row re-scored the same way.
    def rescore(row: str, seed: int, acc: float, points: int) -> None:
        scores = tmp_path / "tiny" / row / "ipc1" / f"seed{seed}" / "scores"
        scores.mkdir()
        (scores / "sadm-pointnet.json").write_text(json.dumps(
            {"acc_mean": acc, "accuracies": [acc, acc], "evaluator": {"eval_epochs": 500}, "points_per_cloud": points}))

    rescore("tiny-distill", 1, 0.5, 150)
    assert main(["table", str(spec), "--storage", str(tmp_path), "--no-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    column = lines[0].split(" | ").index("IPC 1: sadm-pointnet test %")
    cell = next(ln for ln in lines if ln.startswith("| tiny distill |")).split(" | ")[column]
    assert cell == "50.00 [1 seed × 2 runs, 500 epochs]"
    rescore("baseline-random-real", 0, 0.25, 40)  # quick's clouds have 150 points: these were thinned
    assert main(["table", str(spec), "--storage", str(tmp_path), "--no-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(ln for ln in lines if ln.startswith("| tiny distill |")).split(" | ")[column] == \
        "50.00 (+25.00) [1 seed × 2 runs, 500 epochs]"
    assert next(ln for ln in lines if ln.startswith("| baseline: random real |")).split(" | ")[column] == \
        "25.00 [1 seed × 2 runs, 500 epochs, shapes thinned to 40 points]"


@pytest.mark.parametrize("change,message", [
    ({"rows": []}, "no rows"),
    ({"colour": 1}, "unknown key 'colour'"),
    ({"rows": [{"id": "x", "label": "x", "set": {"dept": 2}}]}, "table row 'x' (ipc 1): unknown config key 'dept'"),
    ({"rows": [{"id": "x", "label": "x", "preset": "quick", "ipc": [10]}]}, "row 'x' has ipc [10], not all in the table's ipc [1]"),
    ({"rows": [{"id": "x", "label": "x", "preset": "quick", "ipc": ["ten"]}]}, "row 'x': ipc must be whole numbers, e.g. [1, 10]; got ['ten']"),
    ({"seeds": [0, -1]}, "seeds must be whole numbers"),
    ({"rows": 5}, "rows must be a list of rows, each with a label"),
    ({"seeds": []}, "ipc and seeds need at least one value each"),
    ({"ipc": []}, "ipc and seeds need at least one value each"),
    ({"rows": [{"id": "x", "label": "x", "preset": "quick", "ipc": []}]}, "row 'x' has ipc [], not all in the table's ipc [1]"),
    ({"rows": [{"id": "ours", "label": "Ours", "preset": "quick"}, {"id": "ours", "label": "ours", "preset": "quick"}]},
     "two rows have the id 'ours'"),
    ({"rows": [{"id": "Ours 1", "label": "x", "preset": "quick"}]}, "row 'x' needs an id"),
    ({"rows": [{"id": "a", "label": "a", "preset": "quick"}, {"id": "b", "label": "b", "preset": "quick", "set": {"threshold": 100}}]},
     "rows use different data (mnist threshold=100, mnist threshold=75)"),
    ({"rows": [3]}, "row 1 needs a label"),
    ({"reference": "nope"}, "reference 'nope' is not the id of a row that runs"),
    ({"protocol": 3}, "protocol must be a mapping, e.g. {lr: 0.1}; got 3"),
    ({"rows": [{"id": "x", "label": "x", "preset": "quick", "ipc_set": {1: 0.1}}]}, "row 'x': ipc_set for ipc 1 must be a mapping"),
    ({"rows": [{"id": "x", "label": "x", "preset": "quick", "paper": {"IPC 1": 33.9}}]}, "row 'x': the keys of paper must be whole numbers"),
])
def test_bad_specs_are_one_line_errors(tmp_path, change, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_table(_write(tmp_path, {**SPEC, **change}))


def test_a_missing_spec_names_the_shipped_ones(monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])  # the repository root, where tables/ lives
    with pytest.raises(UserError, match=re.escape("table spec tables/mnsit.yaml not found; shipped specs: ") + ".*tables/mnist.yaml"):
        load_table("tables/mnsit.yaml")


def test_a_row_tuned_for_one_ipc_runs_at_that_ipc_only(tmp_path, mnist_dir, capsys):
    rows = [SPEC["rows"][0], {"id": "at-two", "label": "at two", "preset": "quick", "set": {"init": "herding", "iterations": 0},
                              "ipc": [2]}]
    spec = _write(tmp_path, {**SPEC, "ipc": [1, 2], "seeds": [0], "rows": rows})
    data = ["--data-dir", str(mnist_dir)] if mnist_dir else []
    assert main(["table", str(spec), "--storage", str(tmp_path), *data]) == 0
    cells = sorted(p.relative_to(tmp_path / "tiny").as_posix()
                   for p in tmp_path.glob("tiny/*/ipc*/seed*/metrics.json"))
    assert cells == ["at-two/ipc2/seed0/metrics.json", "baseline-random-real/ipc1/seed0/metrics.json",
                     "baseline-random-real/ipc2/seed0/metrics.json"]
    at_two = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| at two |"))
    assert at_two.split(" | ")[1:3] == ["1 × 150", "—"] and at_two.endswith("| — / 1 |")


def test_part_of_a_table_runs_alone_and_unknown_parts_are_errors(tmp_path, mnist_dir, capsys):
    spec = _write(tmp_path, SPEC)
    data = ["--data-dir", str(mnist_dir)] if mnist_dir else []
    args = ["table", str(spec), "--storage", str(tmp_path), *data]
    assert main([*args, "--rows", "baseline-random-real", "--seed", "1"]) == 0
    cells = [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("tiny/*/ipc1/seed*/metrics.json")]
    assert cells == ["tiny/baseline-random-real/ipc1/seed1/metrics.json"]
    capsys.readouterr()
    for extra, message in ((["--rows", "nope"], "no row 'nope'; rows: baseline-random-real, tiny-distill"),
                           (["--seed", "7"], "seed 7 is not in the spec"), (["--ipc", "10"], "ipc 10 is not in the spec")):
        for mode in ([], ["--no-run"]):  # a typo fails whether or not the table would run
            assert main([*args, *extra, *mode]) == 2
            err = capsys.readouterr().err
            assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_device_is_where_cells_run_and_the_table_names_gpu_cells(tmp_path, mnist_dir, capsys):
    spec = _write(tmp_path, {**SPEC, "rows": SPEC["rows"][:1]})
    data = ["--data-dir", str(mnist_dir)] if mnist_dir else []
    args = ["table", str(spec), "--storage", str(tmp_path), *data]
    has_cuda = __import__("torch").cuda.is_available()
    assert main([*args, "--seed", "0", "--device", "auto"]) == 0
    seed0 = tmp_path / "tiny" / "baseline-random-real" / "ipc1" / "seed0"
    # auto is recorded as the device the cell ran on, not as "auto"
    assert yaml.safe_load((seed0 / "config.yaml").read_text())["device"] == ("cuda" if has_cuda else "cpu")
    assert ("Ran on a GPU" in capsys.readouterr().out) == has_cuda
    if not has_cuda:
        # A missing cell asked to run on an absent GPU: one line, exit 2, finished cells untouched.
        stamp = (seed0 / "metrics.json").stat().st_mtime_ns
        assert main([*args, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "no CUDA device is visible" in err and err.count("\n") == 1
        assert (seed0 / "metrics.json").stat().st_mtime_ns == stamp
        assert not (tmp_path / "tiny" / "baseline-random-real" / "ipc1" / "seed1" / "metrics.json").exists()
    # A cell brought back from a GPU machine records device cuda in its config; the table says so.
    cfg = yaml.safe_load((seed0 / "config.yaml").read_text())
    (seed0 / "config.yaml").write_text(yaml.safe_dump({**cfg, "device": "cuda"}, sort_keys=False))
    assert main([*args, "--no-run"]) == 0
    assert "Ran on a GPU (device cuda); every other cell ran on a CPU: baseline: random real (IPC 1, seed 0)." \
        in capsys.readouterr().out
