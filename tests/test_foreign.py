"""``tune-distill evaluate`` on sets made by other tools: a y-up ``.npy`` of 2,048-point clouds with
its labels from the class blocks, an ``.npz`` under other array names, a shipped run folder's
scores filed under ``scores/``, and a one-line error for each way a file can be malformed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tune_distill.cli import main
from tune_distill.core.errors import UserError
from tune_distill.methods.synthetic import init_synthetic
from tune_distill.recipe.foreign import Y_UP_TO_Z_UP, read_set

from conftest import REPO

DATA = REPO.parent / "shared" / "data" / "modelnet10_pcd1024"
# A few seconds: one PointNet, 2 epochs, the first 40 test shapes.
TINY = ["--set", "eval_models=1", "--set", "eval_epochs=2", "--set", "eval_test_size=40", "--data-dir", str(DATA)]


@pytest.fixture(scope="module")
def y_up_set(modelnet10, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """One real shape per class as 2,048 points (its 1,024 and the same jittered), turned into a
    y-up frame and saved as another tool would: an .npy, one block of clouds per class."""
    points, _, _ = init_synthetic("real", modelnet10.train, modelnet10.num_classes, modelnet10.domain, 1, 1024,
                               torch.Generator().manual_seed(0))
    z_up = points.numpy()
    z_up = np.concatenate([z_up, z_up + 0.01 * np.random.default_rng(0).standard_normal(z_up.shape)], 1).astype(np.float32)
    y_up = z_up @ np.linalg.inv(Y_UP_TO_Z_UP).T
    assert np.allclose(y_up[..., 1], z_up[..., 2])  # y is up in the file
    path = tmp_path_factory.mktemp("foreign") / "set.npy"
    np.save(path, y_up)
    return path, z_up


def test_read_set_turns_a_y_up_set_into_our_frame(y_up_set):
    path, z_up = y_up_set
    points, labels = read_set(path, 10, blocks=True, up="y")
    assert points.shape == (10, 2048, 3) and labels.tolist() == list(range(10))
    assert np.allclose(points, z_up, atol=1e-6)


def test_evaluate_scores_a_y_up_npy_of_2048_point_clouds(y_up_set, tmp_path, capsys):
    path, z_up = y_up_set
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(path), "--dataset", "modelnet10", "--labels-blocks", "--up", "y",
                 "--protocol", "sadm", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "protocol sadm" in printed and "per class: bathtub" in printed
    metrics = json.loads(out.read_text())
    assert metrics["points_per_cloud"] == 2048 and len(metrics["accuracies"]) == 1
    assert set(metrics["test_per_class"]) <= {"bathtub", "bed", "chair", "desk", "dresser", "monitor", "night_stand",
                                             "sofa", "table", "toilet"}
    ev = metrics["evaluator"]
    assert (ev["eval_protocol"], ev["eval_net"], ev["eval_optimizer"], ev["eval_augment"], ev["eval_models"]) == \
        ("sadm", "pointnet", "sgd", False, 1)
    # The same set saved z-up in an .npz, under other names, scores the same to the bit.
    npz = tmp_path / "mine.npz"
    np.savez(npz, xyz=read_set(path, 10, blocks=True, up="y")[0], y=np.arange(10))
    assert main(["evaluate", str(npz), "--dataset", "modelnet10", "--points-key", "xyz", "--labels-key", "y",
                 "--protocol", "sadm", *TINY]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accuracies"] == metrics["accuracies"]


def test_record_files_a_run_folders_scores_and_checks_them_on_a_rerun(tmp_path, capsys):
    cell = tmp_path / "cell"
    shutil.copytree(REPO / "distilled/modelnet10/herding-fps-16x64/ipc1/seed0", cell)
    args = ["evaluate", str(cell), "--protocol", "table", "--record", *TINY]
    assert main(args) == 0
    assert "recorded" in capsys.readouterr().out
    recorded = json.loads((cell / "scores" / "table-pointnet.json").read_text())
    assert recorded["evaluator"]["eval_protocol"] == "table" and recorded["evaluator"]["eval_epochs"] == 2
    assert main(args) == 0
    assert f"reproduces {cell / 'scores' / 'table-pointnet.json'} to the bit" in capsys.readouterr().out
    assert main([*args, "--set", "eval_epochs=3"]) == 2  # other settings: refused, the file kept
    assert "delete it to re-record" in capsys.readouterr().err
    assert json.loads((cell / "scores" / "table-pointnet.json").read_text()) == recorded


def test_a_ceiling_is_scored_on_the_training_set_it_stands_for(tmp_path, capsys):
    """A full-data ceiling stores no set: ``evaluate`` rebuilds it (every training shape outside
    the validation hold-out, thinned as told) and files its scores like any cell's."""
    cell = tmp_path / "full"
    shutil.copytree(REPO / "distilled/modelnet10/full/ipc1/seed0", cell)
    args = ["evaluate", str(cell), "--protocol", "table", "--record", *TINY, "--set", "eval_epochs=1",
            "--set", "points=16", "--set", "init_sampling=fps", "--set", "eval_batch=64"]
    assert main(args) == 0
    recorded = json.loads((cell / "scores" / "table-pointnet.json").read_text())
    assert (recorded["clouds"], recorded["points_per_cloud"]) == (3991 - 400, 16)  # ModelNet10's training shapes
    assert main(args) == 0
    assert "to the bit" in capsys.readouterr().out


def _save(tmp_path: Path, points: np.ndarray, labels: np.ndarray | None = None) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, points=points, **({} if labels is None else {"labels": labels}))
    return path


GOOD = np.zeros((20, 64, 3), np.float32)
BLOCKS = np.repeat(np.arange(10), 2)


@pytest.mark.parametrize("points, labels, message", [
    (np.zeros((20, 64), np.float32), BLOCKS, r"points must have shape \(clouds, points per cloud, 3\); got \(20, 64\)"),
    (np.zeros((20, 64, 2), np.float32), BLOCKS, "points must have shape"),
    (np.where(np.arange(20)[:, None, None] == 3, np.nan, GOOD), BLOCKS, "1 clouds hold NaN or infinite coordinates"),
    (GOOD, BLOCKS + 1, r"labels must lie in 0..9 \(the dataset's classes\); got 1..10"),
    (GOOD, -BLOCKS, r"labels must lie in 0..9"),
    (GOOD, BLOCKS % 5, "class-count mismatch: the set has clouds of 5 classes, the dataset 10"),
    (GOOD, BLOCKS[:19], r"20 clouds but labels of shape \(19,\)"),
    (GOOD, BLOCKS + 0.5, "labels must be integers"),
    (GOOD, None, "has no array 'labels'"),
])
def test_each_malformed_set_is_one_line_naming_the_problem(tmp_path, points, labels, message):
    with pytest.raises(UserError, match=message) as error:
        read_set(_save(tmp_path, points, labels), 10)
    assert "\n" not in str(error.value)


def test_malformed_npy_layouts_and_the_cli_exit_status(tmp_path, capsys):
    path = tmp_path / "set.npy"
    np.save(path, np.zeros((21, 64, 3), np.float32))
    with pytest.raises(UserError, match="21 clouds do not split into 10 equal class blocks"):
        read_set(path, 10, blocks=True)
    with pytest.raises(UserError, match="holds points only: give their labels with --labels FILE"):
        read_set(path, 10)
    (tmp_path / "labels.txt").write_text("\n".join(map(str, range(10))))
    with pytest.raises(UserError, match=r"21 clouds but labels of shape \(10,\)"):
        read_set(path, 10, labels_file=tmp_path / "labels.txt")
    assert main(["evaluate", str(path), "--dataset", "modelnet10", "--labels-blocks", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "equal class blocks" in err
