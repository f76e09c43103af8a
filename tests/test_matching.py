"""Gradient distances on known values, and distribution matching."""

from __future__ import annotations

import math

import pytest
import torch

from tune_distill.methods.matching import distribution_match, gradient_distance


def test_sum_of_squares_and_mse():
    real = [torch.tensor([[1.0, 2.0]]), torch.tensor([3.0])]
    syn = [torch.zeros(1, 2), torch.zeros(1)]
    assert gradient_distance(real, syn, "sum_of_squares").item() == pytest.approx(1 + 4 + 9)
    assert gradient_distance(real, syn, "mse").item() == pytest.approx((1 + 4) / 2 + 9)


def test_cosine_of_whole_vectors():
    a = [torch.tensor([[1.0, 0.0]]), torch.tensor([0.0])]
    assert gradient_distance(a, [torch.tensor([[2.0, 0.0]]), torch.tensor([0.0])], "cosine").item() == pytest.approx(0, abs=1e-6)
    assert gradient_distance(a, [torch.tensor([[0.0, 3.0]]), torch.tensor([0.0])], "cosine").item() == pytest.approx(1, abs=1e-6)
    assert gradient_distance(a, [torch.tensor([[-1.0, 0.0]]), torch.tensor([0.0])], "cosine").item() == pytest.approx(2, abs=1e-6)


def test_layerwise_cosine_per_output_channel_ignoring_biases():
    # A Linear-like weight with 2 output rows: row 0 parallel (0), row 1 orthogonal (1).
    real = [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([5.0, -5.0])]
    syn = [torch.tensor([[3.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 0.0])]
    assert gradient_distance(real, syn, "layerwise_cosine").item() == pytest.approx(1.0, abs=1e-5)


def test_layerwise_cosine_reads_sparse_kernels_by_output_channel():
    # (K, C_in, C_out): output channel last. Channel 0 matches, channel 1 is opposite.
    real = torch.zeros(3, 2, 2)
    real[..., 0] = 1.0
    real[..., 1] = 1.0
    syn = real.clone()
    syn[..., 1] = -1.0
    assert gradient_distance([real], [syn], "layerwise_cosine").item() == pytest.approx(2.0, abs=1e-5)


def test_unknown_distance():
    with pytest.raises(ValueError, match="unknown distance"):
        gradient_distance([torch.zeros(1)], [torch.zeros(1)], "l1")


def test_distribution_match_is_squared_mean_distance():
    embed = lambda x: x  # noqa: E731 - the identity embedding makes the value checkable
    real = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    syn = torch.tensor([[1.0, 3.0]], requires_grad=True)
    loss = distribution_match(embed, real, syn)
    assert loss.item() == pytest.approx(0 + 4)
    loss.backward()
    assert torch.allclose(syn.grad, torch.tensor([[0.0, 4.0]]))
    assert math.isfinite(loss.item())


def test_distribution_match_variance_term_spreads_the_synthetic_clouds():
    embed = lambda x: x  # noqa: E731
    real = torch.tensor([[0.0], [4.0]])  # mean 2, variance 8
    syn = torch.tensor([[1.0], [3.0]], requires_grad=True)  # mean 2, variance 2
    assert distribution_match(embed, real, syn).item() == pytest.approx(0)  # the means already agree
    loss = distribution_match(embed, real, syn, var_weight=0.5)
    assert loss.item() == pytest.approx(0.5 * (8 - 2) ** 2)
    loss.backward()
    assert syn.grad[0] > 0 > syn.grad[1]  # a descent step moves the two clouds apart
    # One cloud per class has no variance to match: the term is off, not NaN.
    one = torch.tensor([[1.0]], requires_grad=True)
    assert distribution_match(embed, real, one, var_weight=1.0).item() == pytest.approx(1.0)
