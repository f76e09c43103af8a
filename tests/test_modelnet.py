"""Real 3D shapes: the ModelNet loaders, the stratified validation split, PointNet, the point
evaluator and a whole run on ModelNet10, on the real files in ../shared/data."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tune_distill import make_config, run
from tune_distill.core.errors import UserError
from tune_distill.core.types import PointBatch
from tune_distill.data import hold_out, load_dataset
from tune_distill.data.modelnet import CHECKSUMS, clouds_from_arrays, normalize
from tune_distill.evaluate import EvalSettings, build_evaluator
from tune_distill.methods.synthetic import init_synthetic
from tune_distill.nets import PointNet

from conftest import REPO

DATA = REPO.parent / "shared" / "data"
MN10 = DATA / "modelnet10_pcd1024"
# A run sized to seconds: few iterations, a narrow evaluator, 60 test shapes.
TINY = dict(iterations=3, batch_real=4, width=16, eval_models=2, eval_epochs=3, eval_width=8, eval_depth=2,
            eval_test_size=60, points=128, log_every=1)


@pytest.fixture(scope="module")
def mn10(modelnet10):
    return modelnet10


def test_modelnet10_is_the_official_split_normalised_into_the_unit_ball(mn10):
    assert (len(mn10.train), len(mn10.test), mn10.num_classes) == (3991, 908, 10)
    assert mn10.class_names[:3] == ("bathtub", "bed", "chair") and mn10.domain.grid_shape is None
    assert torch.bincount(mn10.train.labels).tolist() == [106, 515, 889, 200, 200, 465, 200, 680, 392, 344]
    for clouds in (mn10.train, mn10.test):
        assert clouds.points.dtype == torch.float32 and (clouds.counts == 1024).all()
        pts = clouds.points.view(-1, 1024, 3)
        radius = pts.norm(dim=2).amax(1)
        assert torch.allclose(radius, torch.ones_like(radius), atol=1e-5)  # farthest point on the sphere
        assert pts.mean(1).abs().max() < 1e-5  # centred
    # The raw coordinates span orders of magnitude; normalised shapes keep their proportions.
    raw = np.load(MN10 / "train_points.npy", mmap_mode="r")[:5]
    ratio = np.linalg.norm(raw - raw.mean(1, keepdims=True), axis=2).max(1)
    assert np.allclose(normalize(np.asarray(raw)) * ratio[:, None, None], raw - raw.mean(1, keepdims=True), atol=1e-3 * ratio.max())


def test_modelnet40_loads_from_a_data_root():
    mn40 = load_dataset("modelnet40", DATA)  # the data root holding modelnet40_pcd1024/
    assert (len(mn40.train), len(mn40.test), mn40.num_classes) == (9843, 2468, 40)
    assert mn40.train.points.dtype == torch.float32 and mn40.class_names[0] == "airplane"


@pytest.mark.parametrize("damage", ["truncate", "swap"])
def test_a_corrupt_or_swapped_file_is_one_line_naming_it(tmp_path, damage):
    for name in CHECKSUMS["modelnet10"]:
        (tmp_path / name).symlink_to(MN10 / name)
    if damage == "truncate":
        (tmp_path / "test_points.npy").unlink()
        (tmp_path / "test_points.npy").write_bytes((MN10 / "test_points.npy").read_bytes()[:100_000])
        bad = "test_points.npy"
    else:
        for name in ("train_labels.npy", "test_labels.npy"):
            (tmp_path / name).unlink()
        (tmp_path / "train_labels.npy").symlink_to(MN10 / "test_labels.npy")
        (tmp_path / "test_labels.npy").symlink_to(MN10 / "train_labels.npy")
        bad = "test_labels.npy"
    with pytest.raises(UserError) as err:
        load_dataset("modelnet10", tmp_path)
    message = str(err.value)
    assert "\n" not in message and bad in message and "SHA-256" in message and "--data-dir" in message
    (tmp_path / "class_names.txt").unlink()
    with pytest.raises(UserError, match="class_names.txt not found"):
        load_dataset("modelnet10", tmp_path)


def test_the_cli_reports_a_missing_dataset_in_one_line(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "tune_distill.cli", "run", "--preset", "modelnet10-quick",
                           "--data-dir", str(tmp_path), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_validation_split_is_stratified_and_sized_per_class(mn10):
    rest, val = hold_out(mn10.train, 400, 10, seed=3, stratified=True)
    counts = torch.bincount(val.labels, minlength=10)
    share = torch.bincount(mn10.train.labels, minlength=10) * 400 / len(mn10.train)
    assert len(val) == 400 and len(rest) == 3991 - 400 and ((counts - share).abs() < 1).all()
    again = hold_out(mn10.train, 400, 10, seed=3, stratified=True)[1]
    assert torch.equal(val.points, again.points)  # fixed: every run holds out the same shapes
    # Disjoint: no validation shape is left in the training part.
    kept = {tuple(p) for p in rest.points.view(-1, 1024 * 3)[:, :6].tolist()}
    assert not any(tuple(p) in kept for p in val.points.view(-1, 1024 * 3)[:, :6].tolist())
    with pytest.raises(UserError, match="val_size=3985 .* choose at most 3981"):
        hold_out(mn10.train, 3985, 10, seed=3, stratified=True)
    with pytest.raises(UserError, match="every cloud of class 0"):
        hold_out(mn10.train, 3981, 10, seed=3, stratified=True)


def test_pointnet_sees_a_ragged_batch_as_each_cloud_alone():
    # Real clouds may have any number of points: padding by repetition leaves max pooling exact.
    gen = torch.Generator().manual_seed(0)
    shapes = [torch.rand(n, 3, generator=gen) * 2 - 1 for n in (5, 17, 64)]
    clouds = clouds_from_arrays([s.numpy() for s in shapes], np.array([0, 1, 2]))
    torch.manual_seed(0)
    net = PointNet(3, 4, width=8, depth=3, norm="none").eval()
    batch = clouds.batch(torch.arange(3))
    together = net(batch.padded())
    alone = torch.cat([net(s[None]) for s in shapes])
    assert batch.padded().shape == (3, 64, 3) and torch.allclose(together, alone, atol=1e-6)


def test_pointnet_gradient_matching_reaches_the_coordinates():
    torch.manual_seed(0)
    net = PointNet(3, 10, width=8, depth=2, norm="instance")
    syn = torch.rand(2, 32, 3, requires_grad=True)
    from tune_distill.methods.matching import gradient_match

    loss = gradient_match(net, torch.rand(6, 32, 3), torch.full((6,), 1), syn, torch.full((2,), 1), "sum_of_squares")
    (grad,) = torch.autograd.grad(loss, syn)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_point_evaluator_is_deterministic_and_learns(mn10):
    train, val = hold_out(mn10.train, 100, 10, seed=0, stratified=True)
    gen = torch.Generator().manual_seed(0)
    syn, labels, _ = init_synthetic("real", train, 10, mn10.domain, 4, 256, gen)
    settings = EvalSettings(models=2, epochs=10, width=8, depth=3, lr=0.003, batch=8, augment=True)
    evaluator = build_evaluator("point", mn10.domain, 10, {"test": mn10.test.subset(torch.arange(0, 908, 6)), "val": val},
                                settings)
    first = evaluator(syn, labels, seed=5)
    assert evaluator(syn, labels, seed=5) == first  # same seed, same accuracies, to the bit
    assert set(first) == {"test", "val"} and len(first["test"]) == 2
    assert np.mean(first["test"]) > 0.25  # well above chance (0.10) from 40 real shapes


def test_balanced_accuracy_weighs_every_class_alike(mn10):
    # A classifier right on every test shape but the bathtubs: plain accuracy loses the
    # bathtubs' share of the 908 shapes, balanced accuracy one class in ten.
    from tune_distill.evaluate.settings import top1

    y = mn10.test.labels
    bathtub = mn10.class_names.index("bathtub")
    shown = F.one_hot(y, 10).float()  # the "inputs": each shape's own label, one-hot

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, bathtub:bathtub + 1] > 0, torch.roll(x, 1, dims=1), x)

    share = float((y == bathtub).double().mean())
    assert 0 < share < 0.1  # 50 of 908: the test split is not balanced to the shape
    assert top1(predict, shown, y, 100) == pytest.approx(1 - share)
    assert top1(predict, shown, y, 100, "balanced") == pytest.approx(0.9)
    assert top1(lambda x: x, shown, y, 100, "balanced") == 1.0


def test_a_run_scored_by_balanced_accuracy_distils_the_same_set(mn10):
    # The metric is how the set is judged, not how it is made; on the imbalanced validation
    # split the two scores differ.
    cfg = make_config(dict(TINY, eval_split="val"), preset="modelnet10-quick")
    plain, balanced = run(cfg, data=mn10), run(cfg.replace(eval_metric="balanced"), data=mn10)
    assert np.array_equal(plain.points, balanced.points)
    assert plain.accuracies != balanced.accuracies and all(0 <= a <= 1 for a in balanced.accuracies)


@pytest.mark.parametrize("init", ["uniform", "gaussian", "real", "real_noise", "herding", "kcenter", "class_mean_topk"])
def test_every_init_stays_in_the_unit_ball(mn10, init):
    pts, labels, _ = init_synthetic(init, mn10.train.subset(torch.arange(0, 3991, 7)), 10, mn10.domain, 2, 64,
                                 torch.Generator().manual_seed(0), noise=0.05)
    assert pts.shape == (20, 64, 3) and labels.tolist() == [c for c in range(10) for _ in range(2)]
    assert (pts.norm(dim=-1) <= 1 + 1e-6).all()


def test_kcenter_picks_far_apart_shapes(mn10):
    from tune_distill.methods.synthetic import kcenter

    feats = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [-4.0, 0.0]])
    assert kcenter(feats, 3).tolist() == [1, 2, 3]  # nearest the mean first, then the farthest


def test_a_modelnet_run_is_deterministic_and_stays_in_the_ball(mn10):
    cfg = make_config(TINY, preset="modelnet10-quick")
    first = run(cfg, data=mn10)
    again = run(cfg, data=mn10)
    assert np.array_equal(first.points, again.points) and first.accuracies == again.accuracies
    assert first.points.shape == (10, 128, 3) and (np.linalg.norm(first.points, axis=-1) <= 1 + 1e-6).all()
    assert first.split == "test" and "val" in first.other_accuracies
    assert first.history[-1]["iteration"] == 2 and np.isfinite(first.history[-1]["loss"])


@pytest.mark.parametrize("family,encoding", [("sparse", "features"), ("dense", "splat")])
def test_voxel_networks_distil_3d_shapes_through_their_own_grid(mn10, family, encoding):
    # The paper's families on real 3D: points splatted (or quantised) into a voxel grid of
    # voxel_res cells per axis; the points move, and stay in the unit ball.
    cfg = make_config(dict(TINY, family=family, encoding=encoding, norm="instance", depth=2, voxel_res=8, width=8,
                           matching="gradient", eval_models=1, eval_epochs=1, lr=0.05), preset="modelnet10-quick")
    result = run(cfg, data=mn10)
    assert result.history[0]["grad_abs"] > 0 and result.history[-1]["delta_abs"] > 0
    assert (np.linalg.norm(result.points, axis=-1) <= 1 + 1e-6).all()


def test_run_evaluate_and_baseline_on_the_cli(tmp_path):
    common = [f"--set={k}={v}" for k, v in TINY.items()] + ["--data-dir", str(MN10)]
    out = tmp_path / "run"
    cli = [sys.executable, "-m", "tune_distill.cli"]
    proc = subprocess.run([*cli, "run", "--preset", "modelnet10-quick", *common, "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} >= {"synthetic.npz", "synthetic.png", "metrics.json", "history.csv", "config.yaml"}
    assert f"wrote {out}" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "synthetic.npz") as f:
        assert f["points"].shape == (10, 128, 3) and f["labels"].tolist() == list(range(10))
    # Re-scoring the shipped set with the dataset's evaluator reproduces its accuracy, to the bit.
    proc = subprocess.run([*cli, "evaluate", str(out), "--data-dir", str(MN10)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(proc.stdout.splitlines()[-1])
    assert scored["accuracies"] == metrics["accuracies"] and scored["val_accuracies"] == metrics["val_accuracies"]
    proc = subprocess.run([*cli, "baseline", "kcenter", "--preset", "modelnet10-quick", *common,
                           "--out", str(tmp_path / "kc")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    config = (tmp_path / "kc" / "config.yaml").read_text()
    assert "init: kcenter" in config and "iterations: 0" in config and "points: 128" in config
    shutil.rmtree(tmp_path / "kc")


@pytest.mark.parametrize("dataset", ["modelnet10", "modelnet40"])
def test_search_results_export_report_and_table_on_3d_shapes(ray_cluster, tmp_path, capsys, dataset):
    from plyfile import PlyData

    from tune_distill import load_results
    from tune_distill.cli import main
    from tune_distill.tune import search, space_from_dict

    small = dict(TINY, iterations=2, eval_models=1, eval_epochs=2, eval_test_size=40, eval_split="val",
                 val_size={"modelnet10": 100, "modelnet40": 200}[dataset], dataset=dataset)
    space = space_from_dict({"base": {"preset": "modelnet10-quick", "set": small},
                             "params": {"init": {"choice": ["herding", "kcenter"]}},
                             "search": {"algorithm": "grid", "seeds": 1, "concurrency": 2}})
    outcome = search(space, name="mn", storage=tmp_path, data_dir=DATA)
    assert outcome.finished == 2 and not outcome.interrupted
    df = load_results("mn", storage=tmp_path)
    assert sorted(df["init"]) == ["herding", "kcenter"] and (df["status"] == "done").all()
    assert main(["export", "mn", "--storage", str(tmp_path), "--top", "1", "--out", str(tmp_path / "ex")]) == 0
    [folder] = [p for p in (tmp_path / "ex").iterdir() if p.is_dir()]
    classes = {"modelnet10": 10, "modelnet40": 40}[dataset]
    assert len(list((folder / "ply").glob("*.ply"))) == classes
    with np.load(folder / "synthetic.npz") as f:
        cloud = f["points"][0]
    vertex = PlyData.read(str(folder / "ply" / "class0_0.ply"))["vertex"]
    assert np.allclose(np.stack([vertex["x"], vertex["y"], vertex["z"]], 1), cloud)  # the unit-sphere frame as is
    # The exported set re-scored with its dataset's evaluator: the trial's own accuracy (at the
    # trial's thread count, one: CPU results are reproducible at a fixed thread count).
    torch.set_num_threads(1)
    capsys.readouterr()
    assert main(["evaluate", str(folder), "--data-dir", str(DATA)]) == 0
    scored = json.loads(capsys.readouterr().out.splitlines()[-1])
    recorded = json.loads((folder / "metrics.json").read_text())
    assert scored["split"] == "val" and scored["accuracies"] == recorded["accuracies"]
    assert main(["report", "mn", "--storage", str(tmp_path)]) == 0
    assert (tmp_path / "mn" / "report" / "summary.md").exists()
    # A results table on the same data: cells under <storage>/<name>/, printed from them.
    spec = tmp_path / "t.yaml"
    spec.write_text(json.dumps({"name": "t3d", "ipc": [1], "seeds": [0], "protocol": {"eval_split": "test"},
                                "rows": [{"id": "herding", "label": "herding", "preset": "modelnet10-quick",
                                          "set": dict(small, init="herding", iterations=0)}]}))
    capsys.readouterr()
    assert main(["table", str(spec), "--storage", str(tmp_path), "--data-dir", str(DATA)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "t3d" / "herding" / "ipc1" / "seed0" / "selection.json").exists()  # a selection: its picks
    assert "| herding | 1 × 128 |" in out and "(1 seed)" in out
