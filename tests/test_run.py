"""End-to-end runs on real MNIST: determinism, accuracy above chance, splits, evaluation schedule."""

from __future__ import annotations

import numpy as np
import torch

from tune_distill import make_config, run
from tune_distill.recipe.run import split_train

TINY = dict(iterations=4, batch_real=16, width=16, points=120, eval_models=2, eval_epochs=40, eval_width=32,
            eval_test_size=500, log_every=2)


def test_same_config_same_result(mnist):
    cfg = make_config(dict(TINY, family="sparse", encoding="features", init="uniform", network="fixed",
                           eval_models=1, eval_epochs=5), preset="paper-sparse")
    a, b = run(cfg, data=mnist), run(cfg, data=mnist)
    assert np.array_equal(a.points, b.points)
    assert a.accuracies == b.accuracies
    c = run(cfg.replace(seed=1), data=mnist)
    assert not np.array_equal(a.points, c.points)


def test_quick_style_run_beats_chance_and_moves_points(mnist):
    reports = []
    cfg = make_config(dict(TINY, eval_at=[2], val_size=200), preset="quick")
    result = run(cfg, report=reports.append, data=mnist)
    assert result.acc_mean > 0.3  # chance is 0.1
    assert result.points.shape == (10, 120, 3) and result.labels.tolist() == list(range(10))
    assert [r["iteration"] for r in result.history] == [0, 2, 3]
    assert all(r["delta_abs"] > 0 and r["grad_abs"] > 0 for r in result.history)
    assert [e["iteration"] for e in result.evaluations] == [2]
    # Validation is scored beside test at an eval_at iteration: the iteration count is chosen on it.
    assert 0.1 < result.evaluations[0]["val_acc_mean"] <= 1
    assert any("acc_mean" in r for r in reports) and any("loss" in r for r in reports)
    assert result.seconds >= result.distill_seconds > 0 and result.eval_seconds > 0


def test_baseline_is_a_run_without_iterations(mnist):
    cfg = make_config(dict(TINY, iterations=0, init="real", points=400), preset="quick")
    result = run(cfg, data=mnist)
    assert result.history == [] and result.acc_mean > 0.3
    # The points are real digits: integer cells.
    assert np.array_equal(result.points, np.round(result.points))


def test_validation_split_is_disjoint_and_fixed(mnist):
    rest, val = split_train(mnist, 5000)
    again, val2 = split_train(mnist, 5000)
    assert len(val) == 5000 and len(rest) == 55000
    assert torch.equal(val.points, val2.points)
    # Disjoint from the clouds the distillation sees: no validation digit is a training digit.
    key = lambda clouds: {tuple(clouds.batch(torch.tensor([i])).points.flatten().int().tolist()) for i in range(len(clouds))}  # noqa: E731
    val_keys = key(val.subset(torch.arange(300)))
    rest_keys = key(rest.subset(torch.arange(3000)))
    assert not (val_keys & rest_keys) or len(val_keys & rest_keys) < 3  # MNIST has a few exact duplicates
    # Selecting on validation scores validation digits only: the test set is never looked at.
    cfg = make_config(dict(TINY, iterations=0, init="real", val_size=5000, eval_split="val", eval_models=1), preset="quick")
    on_val = run(cfg, data=mnist)
    assert on_val.split == "val" and on_val.other_accuracies == {}
    # A test evaluation scores the same trained networks on the validation digits too.
    on_test = run(cfg.replace(eval_split="test"), data=mnist)
    assert on_test.split == "test" and list(on_test.other_accuracies) == ["val"]
    assert on_test.other_accuracies["val"] == on_val.accuracies
    assert "val_acc_mean" in on_test.metrics()


def test_cosine_lr_schedule_anneals_the_step_on_the_coordinates(mnist):
    # Without momentum an SGD step is lr_t * grad, so delta / grad recovers lr_t per iteration.
    cfg = make_config(dict(TINY, iterations=4, log_every=1, lr=0.5, momentum=0.0, eval_models=1, eval_epochs=1),
                      preset="quick")
    ratios = lambda result: [r["delta_abs"] / r["grad_abs"] for r in result.history]  # noqa: E731
    cosine = ratios(run(cfg.replace(lr_schedule="cosine"), data=mnist))
    expected = [0.5 * (1 + np.cos(np.pi * t / 4)) / 2 for t in range(4)]
    assert np.allclose(cosine, expected, rtol=0.02)
    assert np.allclose(ratios(run(cfg, data=mnist)), 0.5, rtol=0.02)


def test_ce_weight_adds_the_synthetic_cross_entropy_to_distribution_matching(mnist):
    # Every random stream (networks, real batches, augmentation) is independent of ce_weight, so
    # at the first iteration the logged loss is DM's plus ce_weight times the same cross-entropy.
    cfg = make_config(dict(TINY, iterations=1, log_every=1, matching="distribution", network="pretrained",
                           pretrain_steps=5, augment=True, eval_models=1, eval_epochs=1), preset="quick")
    loss = {w: run(cfg.replace(ce_weight=w), data=mnist).history[0]["loss"] for w in (0.0, 1.0, 3.0)}
    ce = loss[1.0] - loss[0.0]
    assert ce > 0.01  # ten classes' cross-entropy of clouds the network has barely learnt
    assert np.isclose(loss[3.0] - loss[0.0], 3 * ce, rtol=1e-4)
