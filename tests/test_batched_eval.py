"""The batched image evaluator (``eval_batched``): K ConvNets trained as one vmapped computation
must be the K ConvNets trained one by one, each with its own random streams.

Tolerance: every trained parameter tensor agrees with the one-by-one model's to 1e-5 relative
(max |difference| / max |value|; the batched convolutions are grouped ones, which round
differently), and the test accuracies are equal. One-by-one training is kept bit-exact.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tune_distill.core.types import PointBatch
from tune_distill.data.image import render
from tune_distill.evaluate import EvalSettings
from tune_distill.evaluate.image import evaluate_images, train_batched, train_one
from tune_distill.methods.synthetic import init_synthetic

SEED, K = 11, 3
# Tiny but complete: augmentation on, a batch of 4 over 10 images (two full batches and a short
# one per epoch), enough epochs to cross the learning-rate drop at half of them.
SETTINGS = EvalSettings(models=K, epochs=4, width=8, depth=2, lr=0.01, batch=4, augment=True)


@pytest.fixture(scope="module")
def digits(mnist):
    """10 real training digits (IPC 1) to train on, the first 1,000 test digits to score on."""
    points, labels = init_synthetic("real", mnist.train, mnist.num_classes, mnist.domain, 1, 250,
                                    torch.Generator().manual_seed(0))
    train_x = render(PointBatch.from_padded(points), mnist.domain.grid_shape)
    test = mnist.test.subset(torch.arange(1000))
    test_x = render(test.batch(torch.arange(len(test))), mnist.domain.grid_shape)
    return train_x, labels, {"test": (test_x, test.labels)}, mnist.num_classes


@pytest.fixture(scope="module")
def stacked(digits) -> dict[str, torch.Tensor]:
    """The K batched models' trained parameters, stacked."""
    train_x, train_y, _, classes = digits
    return train_batched(train_x, train_y, classes, SETTINGS, [SEED + k for k in range(K)])[1]


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
