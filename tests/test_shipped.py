"""The shipped sets as a dataset: the manifest against the files, selections rebuilt bit for bit,
``load_distilled``, ``draw`` and ``export`` of a cell, and the size of ``distilled/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tune_distill import load_distilled
from tune_distill.cli import main
from tune_distill.core.errors import UserError
from tune_distill.recipe.artifacts import load_synthetic, save_run
from tune_distill.recipe.config import make_config
from tune_distill.recipe.run import run
from tune_distill.recipe.selection import SELECTION_FILE, digest, read_selection, rebuild, write_selection
from tune_distill.recipe.shipped import read_manifest, table_entries
from tune_distill.recipe.table import load_table

REPO = Path(__file__).resolve().parents[1]
DISTILLED = REPO / "distilled"
MN10_DIR = REPO.parent / "shared" / "data" / "modelnet10_pcd1024"
SELECTED = "modelnet10/herding-fps-16x64/ipc1/seed0"  # the best ModelNet10 row at 1 cloud's storage
LEARNED = "modelnet10/dm-from-herding/ipc1/seed0"


def test_manifest_lists_every_shipped_cell_as_its_files_say():
    specs = [load_table(p) for p in sorted((REPO / "tables").glob("*.yaml"))]
    fresh = sorted((e for spec in specs for e in table_entries(spec, DISTILLED)), key=lambda e: e["path"])
    assert read_manifest(DISTILLED) == fresh  # rebuilt from the files: the sha256s, kinds and scores agree
    on_disk = {p.parent.relative_to(DISTILLED).as_posix() for p in DISTILLED.rglob("metrics.json")}
    assert {e["path"] for e in fresh} == on_disk  # no cell folder that no table row owns (e.g. a renamed id)
    kinds = {e["kind"] for e in fresh}
    assert {"selection", "distilled", "ceiling"} <= kinds
    for e in fresh:
        assert (e["kind"] == "selection") == (e["file"] == SELECTION_FILE)
        if e["kind"] != "ceiling":
            assert e["stored_floats_per_class"] == e["clouds_per_class"] * e["points_per_cloud"] * 3


def test_distilled_stays_small_and_holds_no_pictures():
    files = [p for p in DISTILLED.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".png"]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20


def test_a_shipped_selection_is_rebuilt_bit_for_bit_and_a_tampered_one_is_refused(modelnet10, tmp_path):
    cell = DISTILLED / SELECTED
    selection = read_selection(cell)
    points, labels = rebuild(selection, modelnet10)
    assert points.shape == (160, 64, 3) and points.dtype == np.float32 and labels.tolist() == sorted(labels.tolist())
    assert digest(points, labels) == selection.sha256
    # Every cloud is 64 distinct points of its training shape (the shape the stored index names).
    shape = modelnet10.train.batch(torch.tensor([selection.indices[0]])).points.numpy()
    assert np.isin(points[0].view("f4,f4,f4"), shape.view("f4,f4,f4")).all() and len(np.unique(points[0], axis=0)) == 64
    other = tmp_path / "tampered"
    other.mkdir()
    swapped = list(selection.indices)
    swapped[0] = swapped[1]  # another shape of the same class than the one picked
    write_selection(type(selection)(**{**selection.__dict__, "indices": tuple(swapped)}), other)
    with pytest.raises(UserError, match="differs from the clouds it recorded"):
        load_synthetic(other, data=modelnet10)
    (other / SELECTION_FILE).write_text("{not json")
    with pytest.raises(UserError, match="is not a readable selection"):
        load_synthetic(other, data=modelnet10)


def test_load_distilled_gives_a_selection_and_a_learned_set(modelnet10):
    points, labels = load_distilled("modelnet10", "herding-fps-16x64", ipc=1, seed=0, data_dir=MN10_DIR)
    assert points.shape == (160, 64, 3) and labels.shape == (160,)
    learned, learned_labels = load_distilled("modelnet10", "dm-from-herding", ipc=1, seed=0)
    with np.load(DISTILLED / LEARNED / "synthetic.npz") as f:
        assert np.array_equal(learned, f["points"]) and np.array_equal(learned_labels, f["labels"])
    with pytest.raises(UserError, match="no shipped set modelnet10/herding-fps at ipc 1.*herding-fps-16x64"):
        load_distilled("modelnet10", "herding-fps", ipc=1, seed=0)


def test_a_selection_run_stores_its_picks_and_rebuilds_them(mnist, tmp_path):
    cfg = make_config({"init": "herding", "iterations": 0, "ipc": 2, "points": 120, "eval_models": 1,
                       "eval_epochs": 1, "eval_width": 8, "eval_test_size": 50, "val_size": 500}, preset="quick")
    result = run(cfg, data=mnist)
    assert result.picks is not None and len(result.picks) == 20
    full, shipped = save_run(result, tmp_path / "run"), save_run(result, tmp_path / "cell", shipped=True)
    assert {p.name for p in shipped.iterdir()} == {"selection.json", "metrics.json", "config.yaml"}
    assert {"synthetic.npz", "synthetic.png", "selection.json"} <= {p.name for p in full.iterdir()}
    points, labels = load_synthetic(shipped, data=mnist)
    assert np.array_equal(points, result.points) and np.array_equal(labels, result.labels)
    # The picks index the training file: each picked digit is the training digit of that index.
    first = mnist.train.batch(torch.tensor([int(result.picks[0])])).points.numpy()
    assert {tuple(p) for p in points[0].tolist()} <= {tuple(p) for p in first.tolist()}
    # A learned set keeps its points and records no picks.
    learned = run(cfg.replace(iterations=1, batch_real=4, width=8), data=mnist)
    assert learned.picks is None
    assert not (save_run(learned, tmp_path / "learned", shipped=True) / SELECTION_FILE).exists()


def test_draw_and_export_a_shipped_selection(tmp_path, capsys):
    cell = tmp_path / "cell"
    shutil.copytree(DISTILLED / SELECTED, cell)
    data = ["--data-dir", str(MN10_DIR)]
    assert main(["draw", str(cell), "--out", str(tmp_path / "set.png"), *data]) == 0
    assert (tmp_path / "set.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["export", str(cell), "--out", str(tmp_path / "out"), *data]) == 0
    with np.load(tmp_path / "out" / "synthetic.npz") as f:
        assert f["points"].shape == (160, 64, 3)
    assert len(list((tmp_path / "out" / "ply").glob("*.ply"))) == 160
    assert main(["draw", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err

