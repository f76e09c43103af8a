"""Adding a dataset or a matching objective is one module plus one registration line: a toy 3D
point-cloud dataset generated here, and a trivial objective, registered, validated by the config
and run by ``run`` like the shipped ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tune_distill import UserError, make_config, run
from tune_distill.core.types import Dataset, Domain
from tune_distill.data import DATASETS, DatasetSpec, register
from tune_distill.data.modelnet import PRESET, clouds_from_arrays
from tune_distill.methods.matching import OBJECTIVES, register_objective


# --- what a new dataset module holds: a loader and a spec ------------------------------------
def load_toy(data_dir=None, noise: float = 0.02) -> Dataset:
    """Three classes of 64-point clouds in the unit ball: a sphere, a circle, a segment."""
    gen = np.random.default_rng(0)

    def shapes(n: int) -> tuple[list[np.ndarray], np.ndarray]:
        clouds, labels = [], []
        for i in range(n):
            c = i % 3
            t = gen.uniform(0, 2 * math.pi, 64)
            if c == 0:
                p = gen.normal(size=(64, 3))
                p /= np.linalg.norm(p, axis=1, keepdims=True)
            elif c == 1:
                p = np.stack([np.cos(t), np.sin(t), np.zeros(64)], 1)
            else:
                p = np.stack([np.zeros(64), np.zeros(64), t / math.pi - 1], 1)
            clouds.append(0.9 * p + noise * gen.normal(size=p.shape))
            labels.append(c)
        return clouds, np.array(labels)

    return Dataset(name="toy", domain=Domain(3, None, up=2), num_classes=3, train=clouds_from_arrays(*shapes(60)),
                   test=clouds_from_arrays(*shapes(30)), options={}, class_names=("sphere", "circle", "segment"))


TOY = DatasetSpec("toy", load_toy, kind="points", evaluator="point", presets={
    "toy-quick": dict(PRESET, dataset="toy", points=64, iterations=3, batch_real=4, width=8, eval_models=1,
                      eval_epochs=3, eval_width=8, log_every=1)})
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def toy():
    spec = register(TOY)  # the one registration line (data/__init__.py holds the shipped ones)
    yield spec
    del DATASETS[spec.name]


def test_a_registered_toy_dataset_runs_end_to_end(toy):
    cfg = make_config(toy.presets["toy-quick"])
    result = run(cfg)
    assert result.points.shape == (3, 64, 3) and result.labels.tolist() == [0, 1, 2]
    assert len(result.accuracies) == 1 and 0 <= result.acc_mean <= 1
    assert [r["iteration"] for r in result.history] == [0, 1, 2]
    assert (np.linalg.norm(result.points, axis=2) <= 1 + 1e-6).all()  # kept in its domain
    assert result.class_names == ("sphere", "circle", "segment")


def test_the_spec_decides_what_a_dataset_allows(toy):
    with pytest.raises(UserError, match=r"snap_final works on image datasets \(mnist\) only; turn it off for toy"):
        make_config(dict(toy.presets["toy-quick"], snap_final=True))
    with pytest.raises(UserError, match="unknown dataset 'toy2'; choose one of: mnist, modelnet10, modelnet40, toy"):
        make_config({"dataset": "toy2"})
    with pytest.raises(ValueError, match="registered already"):
        register(TOY)


def test_a_dataset_is_known_only_once_registered():
    assert "toy" not in DATASETS
    with pytest.raises(UserError, match="unknown dataset 'toy'"):
        make_config({"dataset": "toy"})
    assert torch.is_tensor(load_toy().train.points)


# --- what a new objective module holds: a function of the Objective shape --------------------
def logit_means(settings):
    """Match the mean logits of real and synthetic clouds (a trivial loss)."""
    def loss(net, real, y_real, syn, y_syn):
        return ((net(real).mean(0).detach() - net(syn).mean(0)) ** 2).sum()

    return loss
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def logits():
    register_objective("logit_means", logit_means)  # the one registration line
    yield "logit_means"
    del OBJECTIVES["logit_means"]


def test_a_registered_toy_objective_drives_the_distillation(toy, logits):
    cfg = make_config(dict(toy.presets["toy-quick"], matching=logits))
    result = run(cfg)
    assert all(r["loss"] > 0 and r["delta_abs"] > 0 for r in result.history)
    other = run(cfg.replace(matching="distribution"))
    assert not np.array_equal(result.points, other.points)
    with pytest.raises(ValueError, match="registered already"):
        register_objective(logits, logit_means)


def test_an_unregistered_objective_is_a_config_error():
    with pytest.raises(UserError, match="unknown matching objective 'logit_means'; choose one of: gradient, distribution"):
        make_config({"matching": "logit_means"})
