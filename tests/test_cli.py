"""The ``tune-distill run`` / ``baseline`` commands: artifacts, config round trip, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from tune_distill.cli import main

TINY = ["--set", "iterations=3", "--set", "batch_real=8", "--set", "width=8", "--set", "points=80",
        "--set", "eval_models=1", "--set", "eval_epochs=3", "--set", "eval_width=16", "--set", "eval_test_size=200",
        "--set", "log_every=1"]


def _data(mnist_dir):
    return ["--data-dir", str(mnist_dir)] if mnist_dir else []


def test_run_writes_every_artifact_and_config_round_trips(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    assert main(["run", "--preset", "quick", *TINY, "--seed", "4", *_data(mnist_dir), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"synthetic.npz", "synthetic.png", "metrics.json", "history.csv", "config.yaml"}
    with np.load(out / "synthetic.npz") as f:
        assert f["points"].dtype == np.float32 and f["points"].shape == (10, 80, 3)
        assert f["labels"].dtype == np.int64 and f["labels"].tolist() == list(range(10))
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"acc_mean", "acc_std", "accuracies", "seconds"}
    assert len(pd.read_csv(out / "history.csv")) == 3
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["seed"] == 4 and config["iterations"] == 3
    assert "accuracy" in capsys.readouterr().out
    # The written config reproduces the run.
    again = tmp_path / "again"
    assert main(["run", "--config", str(out / "config.yaml"), *_data(mnist_dir), "--out", str(again)]) == 0
    with np.load(out / "synthetic.npz") as a, np.load(again / "synthetic.npz") as b:
        assert np.array_equal(a["points"], b["points"])
    assert json.loads((again / "metrics.json").read_text())["accuracies"] == metrics["accuracies"]


def test_an_existing_run_is_never_overwritten(tmp_path, mnist_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    assert main(["run", *TINY, *_data(mnist_dir), "--out", str(out)]) == 2
    assert (out / "metrics.json").read_text() == "{}"
    assert "already holds a run" in capsys.readouterr().err


def test_baseline_command(tmp_path, mnist_dir, capsys):
    out = tmp_path / "b"
    assert main(["baseline", "random_real", "--ipc", "2", *TINY, *_data(mnist_dir), "--out", str(out)]) == 0
    with np.load(out / "synthetic.npz") as f:
        assert f["points"].shape[0] == 20
    assert yaml.safe_load((out / "config.yaml").read_text())["iterations"] == 0
    # without --set points, a real-digit baseline keeps whole digits (not the preset's 150 points)
    pairs = [TINY[i:i + 2] for i in range(0, len(TINY), 2)]
    whole = [a for pair in pairs if not pair[1].startswith("points=") for a in pair]
    assert main(["baseline", "herding", *whole, *_data(mnist_dir), "--out", str(tmp_path / "h")]) == 0
    assert yaml.safe_load((tmp_path / "h" / "config.yaml").read_text())["points"] == 400
    # A --config file written for a distillation (fewer points, another ipc) sets the ipc, but a
    # real-digit baseline still keeps whole digits.
    (tmp_path / "ipc2.yaml").write_text(yaml.safe_dump({"ipc": 2, "points": 150}))
    assert main(["baseline", "herding", "--config", str(tmp_path / "ipc2.yaml"), *whole, *_data(mnist_dir),
                 "--out", str(tmp_path / "c")]) == 0
    written = yaml.safe_load((tmp_path / "c" / "config.yaml").read_text())
    assert (written["ipc"], written["points"], written["iterations"]) == (2, 400, 0)
    assert main(["baseline", "kmeans", *_data(mnist_dir)]) == 2
    assert "unknown baseline 'kmeans'" in capsys.readouterr().err


def test_a_diverging_run_is_one_line_exit_1(tmp_path, mnist_dir):
    # lr at its upper bound throws every point onto the grid's border; the augmentation then
    # moves a whole class out of the grid, which would leave nothing to match.
    proc = subprocess.run([sys.executable, "-m", "tune_distill.cli", "run", *TINY, "--set", "lr=1000",
                           "--set", "iterations=6", "--set", "matching=gradient", *_data(mnist_dir),
                           "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tune-distill: error: class ") and last.endswith("; lower lr"), last
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args,message", [
    (["--set", "dept=3"], "unknown config key 'dept'; did you mean 'depth'?"),
    (["--set", "depth=9"], "config key 'depth'"),
    (["--set", "pooling=mean"], "one of: max, avg"),
    (["--set", "depth"], "--set expects key=value"),
    (["--preset", "huge"], "invalid choice"),
    (["--config", "/nonexistent.yaml"], "not found"),
    (["--config", "/"], "cannot read config file / (IsADirectoryError); give a config.yaml"),
    (["--set", "eval_split=val"], "val_size"),
])
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "tune_distill.cli", "run", *args, "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_a_config_file_names_its_preset_and_a_different_preset_is_one_line(tmp_path, capsys):
    # A named config (configs/*.yaml) is `preset:` plus the keys that differ from that preset;
    # --config and a table row's config: build on it, and naming another preset beside it is an error.
    from tune_distill import UserError, make_config
    from tune_distill.cli import _config_from_args, build_parser
    from tune_distill.recipe.table import Row, TableSpec

    path = tmp_path / "small.yaml"
    path.write_text("# a header\npreset: paper-dense\ndepth: 2\nlr: 0.05\n")
    expected = make_config({"depth": 2, "lr": 0.05}, preset="paper-dense")
    assert expected.family == "dense" and expected.norm == "none"  # the preset's, not the Config defaults
    for argv in (["run", "--config", str(path)], ["run", "--config", str(path), "--preset", "paper-dense"]):
        assert _config_from_args(build_parser().parse_args(argv)) == expected
    spec = TableSpec("t", [], [1], [0], {}, tmp_path)
    assert spec.config(Row("row", config="small.yaml"), 1, 0) == expected

    assert main(["run", "--config", str(path), "--preset", "quick", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == (f"tune-distill: error: --preset quick differs from the preset 'paper-dense' that --config {path} "
                   "names; drop one\n")
    assert not (tmp_path / "x").exists()
    with pytest.raises(UserError) as exc:
        spec.config(Row("row", preset="quick", config="small.yaml"), 1, 0)
    assert str(exc.value) == ("table row 'row': preset 'quick' differs from the preset 'paper-dense' that its "
                              "config small.yaml names; drop one")
