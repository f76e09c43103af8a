"""Batched evaluation (``eval_batched``): K evaluation networks trained as one computation must be
the K networks trained one by one, each with its own random streams: DC's ConvNets on MNIST
images and PointNets (with BatchNorm's running statistics) on ModelNet10 clouds.

Tolerance: every trained parameter (and buffer) tensor agrees with the one-by-one model's to 1e-5
relative (max |difference| / max |value|; a vmapped convolution is a grouped one, which rounds
differently), and the accuracies are equal. One-by-one training is kept bit-exact.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.func import functional_call

from tune_distill.core.types import PointBatch
from tune_distill.data import hold_out
from tune_distill.data.image import render
from tune_distill.evaluate import EvalSettings, build_evaluator, point
from tune_distill.evaluate.image import evaluate_images, train_batched, train_one
from tune_distill.methods.synthetic import init_synthetic

SEED, K = 11, 3
# Tiny but complete: augmentation on, a batch of 4 over 10 images (two full batches and a short
# one per epoch), enough epochs to cross the learning-rate drop at half of them.
SETTINGS = EvalSettings(models=K, epochs=4, width=8, depth=2, lr=0.01, batch=4, augment=True)


@pytest.fixture(scope="module")
def digits(mnist):
    """10 real training digits (IPC 1) to train on, the first 1,000 test digits to score on."""
    points, labels, _ = init_synthetic("real", mnist.train, mnist.num_classes, mnist.domain, 1, 250,
                                    torch.Generator().manual_seed(0))
    train_x = render(PointBatch.from_padded(points), mnist.domain.grid_shape)
    test = mnist.test.subset(torch.arange(1000))
    test_x = render(test.batch(torch.arange(len(test))), mnist.domain.grid_shape)
    return train_x, labels, {"test": (test_x, test.labels)}, mnist.num_classes


@pytest.fixture(scope="module", params=[False, True], ids=["in-turn", "vmapped"])
def stacked(request, digits) -> dict[str, torch.Tensor]:
    """The K batched models' trained parameters, stacked: the models' layers in turn (a CPU's
    default) or vmapped (a GPU's)."""
    train_x, train_y, _, classes = digits
    return train_batched(train_x, train_y, classes, SETTINGS, [SEED + k for k in range(K)], vectorise=request.param).params


def test_batched_training_equals_one_by_one(digits, stacked):
    train_x, train_y, _, classes = digits
    for k in range(K):
        net = train_one(train_x, train_y, classes, SETTINGS, SEED + k)
        for name, p in net.named_parameters():
            q = stacked[name][k]
            assert (q - p).abs().max() <= 1e-5 * p.abs().max(), (k, name)


def test_batched_accuracies_equal_one_by_one_and_progress_is_told(digits):
    train_x, train_y, sets, classes = digits
    calls: list[tuple[int, int]] = []
    one = evaluate_images(train_x, train_y, sets, classes, SETTINGS, SEED)
    batched = evaluate_images(train_x, train_y, sets, classes, replace(SETTINGS, batched=True),
                              SEED, progress=lambda done, total: calls.append((done, total)))
    assert batched == one and len(batched["test"]) == K
    assert calls == [(0, K), (K, K)]  # batched: all K models finish together


def test_batched_models_are_not_clones(stacked):
    for name, p in stacked.items():
        for a in range(K):
            for b in range(a + 1, K):
                assert not torch.allclose(p[a], p[b]), (name, a, b)


POINT_SETTINGS = EvalSettings(models=K, epochs=3, width=8, depth=2, lr=0.003, batch=8, augment=True, rotate=True)


@pytest.fixture(scope="module")
def shapes(modelnet10):
    """20 real ModelNet10 training shapes (2 per class, batches of 8, 8 and 4) and 150 test shapes."""
    train, _ = hold_out(modelnet10.train, 100, 10, seed=0, stratified=True)
    points, labels, _ = init_synthetic("real", train, 10, modelnet10.domain, 2, 128, torch.Generator().manual_seed(0))
    return points, labels, modelnet10


@pytest.mark.parametrize("vectorise", [False, True], ids=["in-turn", "vmapped"])
def test_batched_pointnets_equal_one_by_one_with_their_own_batchnorm_statistics(shapes, vectorise):
    """In turn, every parameter and BatchNorm statistic matches to 1e-5 relative. Vmapped, the
    models are compared by what they compute (logits on 152 test shapes to 1e-3 relative, the
    same predictions): Adam turns the rounding-level gradients of the biases that BatchNorm
    cancels into full-size steps, so those parameters drift apart without changing the function."""
    points, labels, data = shapes
    stack = point.train_batched(points, labels, 10, POINT_SETTINGS, [SEED + k for k in range(K)], vectorise=vectorise)
    test = data.test.batch(torch.arange(0, 908, 6)).padded()
    stack.skeleton.eval()
    for k in range(K):
        net = point.train_one(points, labels, 10, POINT_SETTINGS, SEED + k)
        with torch.no_grad():
            mine, theirs = net.eval()(test), functional_call(stack.skeleton, stack.model(k), (test,))
        assert (mine - theirs).abs().max() <= 1e-3 * mine.abs().max() and torch.equal(mine.argmax(1), theirs.argmax(1))
        if not vectorise:
            state = dict(net.named_parameters()) | dict(net.named_buffers())
            for name, q in stack.model(k).items():
                p = state[name]
                assert (q - p).abs().max() <= 1e-5 * p.abs().max() if p.is_floating_point() else torch.equal(q, p), (k, name)
    running = stack.buffers["point_mlp.1.bn.running_mean"]
    assert not torch.allclose(running[0], running[1])  # each model keeps its own statistics


@pytest.mark.parametrize("metric", ["accuracy", "balanced"])
def test_batched_point_evaluator_scores_as_one_by_one(shapes, metric):
    points, labels, data = shapes
    splits = {"test": data.test.subset(torch.arange(0, 908, 6))}
    settings = replace(POINT_SETTINGS, metric=metric)
    one = build_evaluator("point", data.domain, 10, splits, settings)(points, labels, seed=SEED)
    calls: list[tuple[int, int]] = []
    batched = build_evaluator("point", data.domain, 10, splits, replace(settings, batched=True))(
        points, labels, seed=SEED, progress=lambda done, total: calls.append((done, total)))
    assert batched == one and len(one["test"]) == K
    assert calls == [(0, K), (K, K)]
