"""The 3D distillation methods beyond mean-embedding DM: per-channel quantile matching (SADM-like)
and several smaller clouds per class at the same storage, on the real ModelNet10 files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tune_distill import make_config, run
from tune_distill.core.errors import UserError
from tune_distill.methods.matching import distribution_match, quantile_embedding
from tune_distill.core.types import PointBatch
from tune_distill.data.points import augment_clouds
from tune_distill.methods.loop import Distillation
from tune_distill.nets import NetSettings, PointNet
from tune_distill.recipe.run import distill_settings, settings

TINY = dict(iterations=3, batch_real=4, width=16, eval_models=1, eval_epochs=2, eval_width=8, eval_depth=2,
            eval_test_size=60, log_every=1)


def test_quantile_embedding_is_each_channels_order_statistics():
    torch.manual_seed(0)
    h = torch.randn(3, 50, 4)
    q = quantile_embedding(h, 5).reshape(3, 5, 4)
    assert torch.equal(q[:, 0], h.amin(1)) and torch.equal(q[:, -1], h.amax(1))  # its ends: min and max pooling
    assert torch.equal(q[:, 2], h.sort(1).values[:, 24])  # the middle rank of 0..49 (24.5, rounded to even)
    assert torch.equal(quantile_embedding(h[:, torch.randperm(50)], 5), q.reshape(3, 20))  # order of points: none


def test_quantile_matching_reaches_the_coordinates_and_differs_from_pooled():
    torch.manual_seed(0)
    net = PointNet(3, 10, 8, 2, norm="none")
    real, syn = torch.rand(6, 64, 3), torch.rand(2, 16, 3, requires_grad=True)
    loss = distribution_match(lambda x: quantile_embedding(net.point_features(x), 8), real, syn)
    (grad,) = torch.autograd.grad(loss, syn)
    assert torch.isfinite(grad).all() and (grad.abs().sum((1, 2)) > 0).all()  # every cloud gets a gradient
    pooled = distribution_match(net.embed, real, syn)
    assert not torch.isclose(loss, pooled)


def test_a_quantile_run_moves_the_points(modelnet10):
    cfg = make_config(dict(TINY, points=64, dm_embedding="quantiles", dm_quantiles=8), preset="modelnet10-quick")
    pooled = run(cfg.replace(dm_embedding="pooled"), data=modelnet10)
    mine = run(cfg, data=modelnet10)
    assert mine.history[-1]["delta_abs"] > 0 and not np.array_equal(mine.points, pooled.points)
    assert run(cfg, data=modelnet10).points.tobytes() == mine.points.tobytes()  # deterministic


def test_quantiles_need_a_pointnet():
    with pytest.raises(UserError, match="dm_embedding=quantiles reads per-point features"):
        make_config({"dm_embedding": "quantiles"}, preset="quick")


def test_cloud_split_keeps_the_storage_in_more_smaller_clouds(modelnet10):
    cfg = make_config(dict(TINY, points=128, ipc=2, cloud_split=4, init="herding"), preset="modelnet10-quick")
    result = run(cfg, data=modelnet10)
    assert result.points.shape == (10 * 2 * 4, 32, 3)  # 8 clouds of 32 points per class: 256 points, as 2 x 128
    assert np.bincount(result.labels).tolist() == [8] * 10
    assert result.history[-1]["delta_abs"] > 0 and (np.linalg.norm(result.points, axis=-1) <= 1 + 1e-6).all()
    with pytest.raises(UserError, match="does not split into cloud_split=3"):
        make_config(dict(points=128, cloud_split=3), preset="modelnet10-quick")


@pytest.mark.parametrize("init", ["real", "herding", "kcenter"])
def test_a_class_with_fewer_shapes_than_clouds_repeats_its_picks_as_other_subsets(modelnet10, init):
    from tune_distill.methods.synthetic import init_synthetic

    few = modelnet10.train.subset(torch.cat([modelnet10.train.members(c)[:3] for c in range(10)]))
    points, labels, _ = init_synthetic(init, few, 10, modelnet10.domain, 5, 64, torch.Generator().manual_seed(0))
    assert points.shape == (50, 64, 3) and np.bincount(labels).tolist() == [5] * 10
    first = points[:5]
    assert len({tuple(p.flatten()[:6].tolist()) for p in first}) == 5  # the 2 repeats are other subsets


def test_real_match_distils_against_real_clouds_of_the_synthetic_size(modelnet10):
    from tune_distill.recipe.run import distill_settings

    cfg = make_config(dict(TINY, points=256, cloud_split=4, real_match=True), preset="modelnet10-quick")
    assert distill_settings(cfg).real_cap == 64 and distill_settings(cfg.replace(real_match=False)).real_cap is None
    matched, whole = run(cfg, data=modelnet10), run(cfg.replace(real_match=False), data=modelnet10)
    assert not np.array_equal(matched.points, whole.points)  # the matching saw other real clouds


def test_farthest_point_sampling_covers_each_shape_more_evenly_than_a_random_subset(modelnet10):
    from tune_distill.methods.synthetic import init_synthetic, thinned_clouds

    shapes = modelnet10.train.subset(torch.cat([modelnet10.train.members(c)[:2] for c in range(10)]))
    whole = shapes.resampled(torch.arange(len(shapes)), 1024, torch.Generator().manual_seed(0))

    def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")

    def coverage(points: torch.Tensor) -> torch.Tensor:  # per cloud: the farthest any of its shape's points is
        return distances(whole, points).amin(2).amax(1)

    picks = {s: init_synthetic("full", shapes, 10, modelnet10.domain, 1, 64, torch.Generator().manual_seed(1),
                               sampling=s)[0] for s in ("random", "fps")}
    assert picks["fps"].shape == (20, 64, 3)
    assert (distances(picks["fps"], whole).amin(2) == 0).all()  # every point is one of its shape's points ...
    assert all(len(torch.unique(c, dim=0)) == 64 for c in picks["fps"])  # ... and no point twice
    assert (coverage(picks["fps"]) < coverage(picks["random"])).all()
    again = init_synthetic("full", shapes, 10, modelnet10.domain, 1, 64, torch.Generator().manual_seed(1), sampling="fps")[0]
    assert torch.equal(again, picks["fps"])  # deterministic in the generator
    thinned = thinned_clouds(shapes, 64, torch.Generator().manual_seed(1))  # real_match's real clouds under fps
    assert thinned.counts.tolist() == [64] * 20 and torch.equal(thinned.resampled(torch.arange(20), 64, torch.Generator())
                                                                .sort(1).values, again.sort(1).values)


def test_herding_in_a_trained_pointnets_features_chooses_other_shapes(modelnet10):
    from tune_distill.methods.synthetic import init_synthetic
    from tune_distill.recipe.run import init_features

    few = modelnet10.train.subset(torch.cat([modelnet10.train.members(c)[:20] for c in range(10)]))
    cfg = make_config(dict(init="herding", init_features="pointnet", init_feature_epochs=3, eval_width=8, eval_depth=2),
                      preset="modelnet10-quick")
    features = init_features(cfg, few, modelnet10, torch.device("cpu"))
    assert features.shape == (200, 16)  # eval_width 8 x 2^(depth - 1) pooled channels per shape
    assert torch.equal(init_features(cfg, few, modelnet10, torch.device("cpu")), features)  # deterministic
    assert init_features(cfg.replace(init_features="occupancy"), few, modelnet10, torch.device("cpu")) is None

    def picks(feats):
        return init_synthetic("herding", few, 10, modelnet10.domain, 3, 64, torch.Generator().manual_seed(0), features=feats)[0]

    assert not torch.equal(picks(features), picks(None))
    with pytest.raises(UserError, match="init_features=pointnet embeds 3D shapes"):
        make_config({"init_features": "pointnet"}, preset="quick")


def test_matching_under_the_evaluators_augmentation_draws_what_the_evaluator_draws(modelnet10):
    """aug_kind=evaluator gives every real and synthetic cloud its own draw of the evaluator's own
    training augmentation (the same function, the same random numbers in the same order),
    differentiably in the synthetic points; a run under it is deterministic and differs from DSA's."""
    cfg = make_config(dict(TINY, points=64, augment=True, aug_kind="evaluator"), preset="modelnet10-quick")
    syn = torch.rand(10, 64, 3) - 0.5
    distillation = Distillation(distill_settings(cfg), settings(NetSettings, cfg), modelnet10.train, 10,
                                modelnet10.domain, syn, torch.device("cpu"))
    real = distillation.real_batch(0, 4)
    mine = PointBatch.from_padded(syn[:1])
    seed = distillation.aug_gen.initial_seed()
    out_real, out_mine = distillation.augmented(real, mine)
    g = torch.Generator().manual_seed(seed)
    up = modelnet10.domain.up
    assert torch.equal(out_real.padded(), augment_clouds(real.padded(), g, up, rotate=False))
    assert torch.equal(out_mine.padded(), augment_clouds(syn[:1], g, up, rotate=False))
    out_mine.points.sum().backward()
    assert syn.grad.abs().sum() > 0
    mine_run = run(cfg, data=modelnet10)
    assert run(cfg, data=modelnet10).points.tobytes() == mine_run.points.tobytes()
    assert not np.array_equal(run(cfg.replace(aug_kind="dsa"), data=modelnet10).points, mine_run.points)
    with pytest.raises(UserError, match="aug_kind=evaluator draws the point evaluator's augmentation"):
        make_config({"aug_kind": "evaluator"}, preset="quick")
