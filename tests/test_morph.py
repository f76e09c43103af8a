"""Anchor clouds and learned blends (``morphs``, 3DDP's parameterisation), on the real ModelNet10
files: what a set stores is what it reports, the clouds matched are the clouds evaluated, and a
run is reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tune_distill import make_config, run
from tune_distill.core.errors import UserError
from tune_distill.methods.loop import Distillation
from tune_distill.methods.morph import aligned, blends, expanded, greedy_match
from tune_distill.nets import NetSettings
from tune_distill.recipe.artifacts import load_synthetic, save_run, save_synthetic
from tune_distill.recipe.run import distill_settings, evaluate_set, settings, split_train

TINY = dict(iterations=3, batch_real=4, width=16, eval_models=1, eval_epochs=2, eval_width=8, eval_depth=2,
            eval_test_size=60, log_every=1, family="pointnet", encoding="points", norm="instance",
            matching="distribution", init="herding", init_sampling="fps")


def test_greedy_match_undoes_a_shuffle_and_aligns_an_ipc_clouds_anchors():
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(40, 3, generator=g)
    shuffle = torch.randperm(40, generator=g)
    perm = greedy_match(reference, reference[shuffle])
    assert sorted(perm.tolist()) == list(range(40)) and torch.equal(reference[shuffle][perm], reference)
    clouds = torch.stack([reference, reference[shuffle] + 0.001, reference[torch.randperm(40, generator=g)]])
    out = aligned(clouds, 3)
    assert torch.allclose(out[1], reference + 0.001) and torch.equal(out[2], reference) and torch.equal(out[0], clouds[0])
    for k in range(3):  # each cloud keeps its own points, reordered
        assert torch.equal(out[k].sort(0).values, clouds[k].sort(0).values)


def test_blends_mix_each_groups_anchors_point_by_point():
    anchors = torch.arange(2 * 3 * 4 * 3, dtype=torch.float32).view(6, 4, 3)  # 2 groups of 3 anchors, 4 points
    logits = torch.tensor([[50.0, 0, 0], [0, 0, 0], [0, 50.0, 0], [0, 0, 0]])  # 2 blends per group
    out = blends(anchors, logits)
    assert out.shape == (4, 4, 3)
    assert torch.allclose(out[0], anchors[0]) and torch.allclose(out[2], anchors[4])  # a one-hot blend is its anchor
    assert torch.allclose(out[1], anchors[:3].mean(0)) and torch.allclose(out[3], anchors[3:].mean(0))
    points, labels = expanded(anchors, torch.tensor([7, 7, 7, 9, 9, 9]), logits)
    assert torch.equal(points[:6], anchors) and labels.tolist() == [7, 7, 7, 9, 9, 9, 7, 7, 9, 9]


def test_a_morph_run_stores_what_it_reports_and_trains_on_what_it_matched(modelnet10, tmp_path):
    cfg = make_config(dict(TINY, points=64, cloud_split=4, morphs=3), preset="modelnet10-quick")
    result = run(cfg, data=modelnet10)
    assert result.points.shape == (10 * 4, 16, 3) and result.mix.shape == (10 * 3, 4) and result.picks is None
    # Storage: every stored coordinate and logit, per class, is what the file holds.
    save_run(result, tmp_path)
    with np.load(tmp_path / "synthetic.npz") as f:
        assert set(f.files) == {"points", "labels", "mix"}
        assert result.stored_floats * 10 == f["points"].size + f["mix"].size == 10 * (64 * 3 + 3 * 4)
    # The logits were learned: they left their random start.
    start = make_config(dict(TINY, points=64, cloud_split=4, morphs=3, iterations=0), preset="modelnet10-quick")
    assert not np.array_equal(run(start, data=modelnet10).mix, result.mix)
    # The file expands to the clouds the run's classifiers trained on: 4 anchors + 3 blends per class.
    points, labels = load_synthetic(tmp_path)
    train_points, train_labels = result.training_set()
    assert points.shape == (10 * 7, 16, 3) and np.array_equal(points, train_points)
    assert np.array_equal(labels, train_labels) and np.bincount(labels).tolist() == [7] * 10
    assert evaluate_set(cfg, points, labels, modelnet10)["test"] == result.accuracies  # re-scored to the bit
    # ... and to the clouds the distillation matched, class by class.
    train, _ = split_train(modelnet10, cfg.val_size)
    loop = Distillation(distill_settings(cfg), settings(NetSettings, cfg), train, 10, modelnet10.domain,
                        torch.from_numpy(result.points.copy()), torch.device("cpu"), torch.from_numpy(result.mix.copy()))
    with torch.no_grad():
        for c in range(10):
            assert torch.equal(loop.training_clouds(c), torch.from_numpy(points[labels == c]))
    again = run(cfg, data=modelnet10)  # the same config and seed give the same set
    assert again.points.tobytes() == result.points.tobytes() and again.mix.tobytes() == result.mix.tobytes()


def test_morphs_need_anchors_of_a_3d_set():
    with pytest.raises(UserError, match="morphs blends the cloud_split anchor clouds"):
        make_config({"morphs": 4}, preset="modelnet10-quick")  # cloud_split 1: one anchor, nothing to blend
    with pytest.raises(UserError, match="morphs blends the cloud_split anchor clouds"):
        make_config({"morphs": 4, "cloud_split": 2, "points": 100}, preset="quick")  # MNIST


def test_blend_logits_that_do_not_fit_the_clouds_are_one_line(tmp_path):
    points, labels = np.zeros((6, 4, 3), np.float32), np.array([0, 0, 0, 1, 1, 1])
    # Rows of 4 logits mean groups of 4 anchors: 6 clouds do not make such groups.
    save_synthetic(tmp_path / "synthetic.npz", points, labels, np.zeros((3, 4), np.float32))
    with pytest.raises(UserError, match="its blends' logits .3, 4. do not fit its 6 clouds"):
        load_synthetic(tmp_path / "synthetic.npz")
