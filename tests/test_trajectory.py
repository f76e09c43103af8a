"""Trajectory matching on real MNIST and real ModelNet10 shapes: the expert and first-stage caches, the
refinement after distillation, its config checks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tune_distill import make_config, run
from tune_distill.core.errors import UserError
from tune_distill.evaluate.point import build_net
from tune_distill.methods.trajectory import train_experts
from tune_distill.recipe.run import eval_settings, matched_clouds, split_train, trajectory_settings

# Two experts of 20 steps (checkpoints at 0, 10, 20) on a narrow network: seconds, not minutes.
TM = dict(iterations=2, batch_real=16, points=120, width=8, tm_iterations=3, tm_experts=2, tm_expert_steps=20,
          tm_expert_every=10, tm_span=1, tm_max_start=1, eval_models=1, eval_epochs=20, eval_width=32,
          eval_test_size=300, log_every=1)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache for the test, so no test reads experts or stages another one computed."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "tune_distill" / "experts"


def test_experts_are_trained_once_and_shared_by_every_seed(mnist, cache):
    cfg = make_config(TM, preset="quick")
    first = train_experts(trajectory_settings(cfg), mnist.train, mnist.domain, mnist.num_classes)
    [path] = list(cache.glob("*.pt"))
    assert len(first) == 2 and all(len(t) == 3 for t in first)  # checkpoints at steps 0, 10 and 20
    assert not torch.equal(first[0][0][0], first[0][-1][0])  # the expert trained
    assert not torch.equal(first[0][0][0], first[1][0][0])  # experts start from different networks
    written = path.stat().st_mtime_ns
    again = train_experts(trajectory_settings(cfg.replace(seed=7)), mnist.train, mnist.domain, mnist.num_classes)
    assert path.stat().st_mtime_ns == written  # read from the cache, not trained again
    assert all(torch.equal(a, b) for ta, tb in zip(first, again) for ca, cb in zip(ta, tb) for a, b in zip(ca, cb))
    train_experts(trajectory_settings(cfg.replace(tm_expert_lr=0.05)), mnist.train, mnist.domain, mnist.num_classes)
    assert len(list(cache.glob("*.pt"))) == 2  # other expert settings, other experts
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        train_experts(trajectory_settings(cfg), mnist.train, mnist.domain, mnist.num_classes)
    finally:
        torch.set_num_threads(threads)
    assert len(list(cache.glob("*.pt"))) == 3  # another thread count may train other experts: its own entry


def test_refinement_continues_the_run_and_is_deterministic(mnist, cache):
    cfg = make_config(TM, preset="quick")
    a, b = run(cfg, data=mnist), run(cfg, data=mnist)
    assert np.array_equal(a.points, b.points) and a.accuracies == b.accuracies
    assert [r["iteration"] for r in a.history] == [0, 1, 2, 3, 4]
    refined = a.history[2:]
    assert all("tm_syn_lr" in r and r["grad_abs"] > 0 and r["delta_abs"] > 0 for r in refined)
    without = run(cfg.replace(tm_iterations=0), data=mnist)
    assert not np.array_equal(a.points, without.points)


def test_a_trajectory_run_takes_its_first_stage_from_the_cache(mnist, cache, tmp_path, monkeypatch):
    cfg = make_config(TM, preset="quick")
    stages = cache.parent / "stages"
    cold = run(cfg, data=mnist)
    [path] = list(stages.glob("*.pt"))
    written = path.stat().st_mtime_ns
    other_tm = run(cfg.replace(tm_lr=0.05, tm_syn_steps=2, eval_epochs=10), data=mnist)
    assert path.stat().st_mtime_ns == written  # other tm_* and eval_* settings: the same first stage, read back
    assert other_tm.history[:2] == cold.history[:2] and not np.array_equal(other_tm.points, cold.points)
    run(cfg.replace(lr=0.05), data=mnist)
    run(cfg.replace(points=100), data=mnist)
    run(cfg.replace(seed=1), data=mnist)
    assert len(list(stages.glob("*.pt"))) == 4  # another first-stage setting or seed: its own entry
    run(cfg.replace(eval_at=[1]), data=mnist)
    assert len(list(stages.glob("*.pt"))) == 4  # intermediate evaluations run inside the stage: not cached
    warm = run(cfg, data=mnist)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    recomputed = run(cfg, data=mnist)
    for result in (warm, recomputed):  # a cached first stage is exactly the one a run computes
        assert np.array_equal(result.points, cold.points) and result.accuracies == cold.accuracies
        assert [r["loss"] for r in result.history] == [r["loss"] for r in cold.history]


def test_the_trajectory_loss_falls_on_a_fixed_segment(mnist, cache):
    # One expert, one start (checkpoint 0 -> 1) and no augmentation: every iteration matches the
    # same segment, so the points and the learnt step size should bring the student closer.
    cfg = make_config(dict(TM, iterations=0, init="herding", tm_iterations=8, tm_experts=1, tm_max_start=0,
                           tm_lr=0.05, augment=False), preset="quick")
    losses = [r["loss"] for r in run(cfg, data=mnist).history]
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("change, words", [
    (dict(tm_max_start=2), r"tm_max_start \+ tm_span must be at most"),
    (dict(encoding="features"), "set encoding=splat"),
    (dict(tm_nets=["dgcnn"]), "unset tm_nets, or use a point-cloud dataset"),
])
def test_inconsistent_trajectory_settings_are_one_line_errors(change, words):
    with pytest.raises(UserError, match=words):
        make_config(dict(TM, **change), preset="quick")
    make_config(dict(TM, **change, tm_iterations=0), preset="quick")  # off: nothing to check


def test_eval_at_does_not_change_the_points(mnist, cache):
    # The cached first stage (no eval_at) and the uncached one (eval_at) distil the same clouds:
    # with real_match and fps, the real clouds thinned to the synthetic clouds' size.
    cfg = make_config(dict(TM, real_match=True, init_sampling="fps", cloud_split=2, eval_test_size=50), preset="quick")
    few = replace(mnist, train=mnist.train.subset(torch.arange(0, len(mnist.train), 20)))  # thinning every digit is slow
    plain, watched = run(cfg, data=few), run(cfg.replace(eval_at=[1]), data=few)
    assert [e["iteration"] for e in watched.evaluations] == [1] and not plain.evaluations
    assert np.array_equal(plain.points, watched.points) and plain.accuracies == watched.accuracies


# 3D: two experts of 20 steps, the evaluator's PointNet at its narrowest, 16 clouds of 16 points per class.
TM3D = dict(iterations=0, points=64, cloud_split=4, init="herding", init_sampling="fps", real_match=True,
            tm_iterations=3, tm_experts=2, tm_expert_steps=20, tm_expert_every=10, tm_span=1, tm_max_start=1,
            tm_lr=0.01, eval_models=1, eval_epochs=2, eval_width=8, eval_depth=2, eval_batch=16,
            eval_test_size=60, val_size=50, log_every=1)


@pytest.fixture(scope="module")
def shapes(modelnet10):
    """Every 10th real ModelNet10 training shape: thinning all of them by farthest points takes seconds."""
    return replace(modelnet10, train=modelnet10.train.subset(torch.arange(0, len(modelnet10.train), 10)))


def test_3d_experts_are_the_evaluators_pointnet_on_real_shapes_thinned_as_the_set(shapes, cache):
    cfg = make_config(TM3D, preset="modelnet10-quick")
    train, _ = split_train(shapes, cfg.val_size)
    real = matched_clouds(cfg, train)
    assert (real.counts == 16).all() and len(real) == len(train)  # thinned to the synthetic clouds' size
    [first, _] = train_experts(trajectory_settings(cfg), real, shapes.domain, shapes.num_classes)
    evaluator = build_net(3, shapes.num_classes, eval_settings(cfg))
    assert [p.shape for p in first[0]] == [p.shape for p in evaluator.parameters()]
    assert not torch.equal(first[0][0], first[-1][0])  # the expert trained


def test_3d_refinement_moves_the_selection_reproducibly_and_its_loss_falls(shapes, cache):
    cfg = make_config(TM3D, preset="modelnet10-quick")
    a, b = run(cfg, data=shapes), run(cfg, data=shapes)
    assert np.array_equal(a.points, b.points) and a.accuracies == b.accuracies
    selection = run(cfg.replace(tm_iterations=0), data=shapes)
    assert not np.array_equal(a.points, selection.points) and a.picks is None and selection.picks is not None
    assert all("tm_syn_lr" in r and r["delta_abs"] > 0 for r in a.history)
    # One expert and one segment (checkpoint 0 -> 1): the student comes closer to the expert.
    fixed = run(cfg.replace(tm_iterations=8, tm_experts=1, tm_max_start=0), data=shapes)
    losses = [r["loss"] for r in fixed.history]
    assert losses[-1] < 0.9 * losses[0]


def test_3d_experts_of_several_architectures_take_turns(shapes, cache):
    # PointNet and DGCNN experts, each of the evaluator's width; the iterations alternate between
    # them, each net moving only its own learnt step size; reproducible (DGCNN's dropout included).
    cfg = make_config(dict(TM3D, tm_nets=["pointnet", "dgcnn"], tm_iterations=4), preset="modelnet10-quick")
    train, _ = split_train(shapes, cfg.val_size)
    [first, _] = train_experts(trajectory_settings(cfg), matched_clouds(cfg, train), shapes.domain, shapes.num_classes,
                               net="dgcnn")
    evaluator = build_net(3, shapes.num_classes, eval_settings(cfg.replace(eval_net="dgcnn")))
    assert [p.shape for p in first[0]] == [p.shape for p in evaluator.parameters()]
    a, b = run(cfg, data=shapes), run(cfg, data=shapes)
    assert np.array_equal(a.points, b.points)
    steps = [(r["tm_syn_lr"], r["tm_syn_lr_dgcnn"]) for r in a.history]
    start = cfg.tm_syn_lr
    assert steps[0][0] != start and steps[0][1] == pytest.approx(start)  # iteration 0: PointNet's turn
    assert steps[1][1] != pytest.approx(start) and steps[1][0] == steps[0][0]  # iteration 1: DGCNN's
    only_pointnet = run(cfg.replace(tm_nets=["pointnet"]), data=shapes)
    assert not np.array_equal(a.points, only_pointnet.points)
    with pytest.raises(UserError, match="name each once"):
        make_config(dict(TM3D, tm_nets=["dgcnn", "dgcnn"]), preset="modelnet10-quick")


def test_3d_trajectory_matching_refuses_blends_in_one_line():
    with pytest.raises(UserError, match="set morphs=0, or tm_iterations=0"):
        make_config(dict(TM3D, morphs=2), preset="modelnet10-quick")
    make_config(dict(TM3D, morphs=2, tm_iterations=0), preset="modelnet10-quick")
    make_config(dict(TM3D, eval_net="dgcnn"), preset="modelnet10-quick")  # its set may be judged by any network
