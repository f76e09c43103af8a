"""Named evaluation protocols (``eval_protocol``): what each one's settings do once they reach the
point evaluator, watched from outside it (torch's global optimizer-step and forward hooks), on
real ModelNet10 shapes."""

from __future__ import annotations

import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tune_distill import make_config
from tune_distill.core.errors import UserError
from tune_distill.evaluate import build_evaluator
from tune_distill.methods.synthetic import init_synthetic
from tune_distill.nets import PointNet
from tune_distill.recipe.config import EVAL_PROTOCOLS
from tune_distill.recipe.run import eval_settings


@pytest.fixture(scope="module")
def small(modelnet10):
    """2 real shapes per class at 64 points, shrunk and moved off the origin (so that only the
    unit-sphere normalisation brings them back), and 20 test shapes."""
    points, labels, _ = init_synthetic("real", modelnet10.train, modelnet10.num_classes, modelnet10.domain, 2, 64,
                                    torch.Generator().manual_seed(0))
    return 0.3 * points + torch.tensor([0.2, -0.1, 0.3]), labels, modelnet10.test.subset(torch.arange(20)), modelnet10


def _watch(cfg, small) -> tuple[list[dict], list[torch.Tensor]]:
    """Evaluate the small set under ``cfg``: each optimizer step's settings and every batch of
    clouds that reaches a training network."""
    points, labels, test, data = small
    steps: list[dict] = []
    batches: list[torch.Tensor] = []

    def on_step(opt, args, kwargs):
        group = opt.param_groups[0]
        steps.append({"type": type(opt).__name__, "lr": group["lr"], "momentum": group.get("momentum"),
                      "weight_decay": group["weight_decay"]})

    def on_forward(module, inputs):
        # The classifier itself (its T-Net, a PointNet of 9 outputs, sees the same clouds).
        if isinstance(module, PointNet) and module.training and module.head[-1].out_features == data.num_classes:
            batches.append(inputs[0].detach().clone())

    handles = [register_optimizer_step_pre_hook(on_step), register_module_forward_pre_hook(on_forward)]
    try:
        evaluator = build_evaluator("point", data.domain, data.num_classes, {"test": test}, eval_settings(cfg))
        evaluator(points, labels, seed=3)
    finally:
        for h in handles:
            h.remove()
    return steps, batches


def _unit_sphere_rows(points: torch.Tensor) -> torch.Tensor:
    centred = points - points.mean(1, keepdim=True)
    return centred / centred.norm(dim=-1).amax(1)[:, None, None]


def test_sadm_trains_by_sgd_with_a_step_and_on_unaugmented_unit_sphere_clouds(small):
    cfg = make_config({"eval_protocol": "sadm", "eval_models": 1, "eval_epochs": 2}, preset="modelnet10")
    steps, batches = _watch(cfg, small)
    per_epoch = 3  # 20 clouds in batches of 8, 8 and 4
    assert {s["type"] for s in steps} == {"SGD"}
    assert {(s["momentum"], s["weight_decay"]) for s in steps} == {(0.9, 5e-4)}
    lrs = [s["lr"] for s in steps]
    assert lrs[:per_epoch] == [0.01] * per_epoch
    assert lrs[per_epoch:] == pytest.approx([0.001] * per_epoch)  # x 0.1 from half of the epochs on
    # Every cloud a network trains on is a training cloud, re-centred and scaled, not augmented.
    expected = _unit_sphere_rows(small[0])
    for batch in batches:
        for cloud in batch:
            assert min(float((cloud - e).abs().max()) for e in expected) < 1e-6
    assert sum(len(b) for b in batches) == 2 * len(small[0])


def test_without_a_protocol_the_evaluator_is_ours_adam_and_augmentation(small):
    """The same watch sees the default protocol train differently: the test above can fail."""
    cfg = make_config({"eval_models": 1, "eval_epochs": 2}, preset="modelnet10")
    steps, batches = _watch(cfg, small)
    assert {s["type"] for s in steps} == {"Adam"} and {s["weight_decay"] for s in steps} == {1e-4}
    expected = small[0]
    assert all(min(float((c - e).abs().max()) for e in expected) > 1e-3 for b in batches for c in b)


def test_a_protocol_sets_its_keys_and_explicit_keys_override_it():
    sadm = make_config({"eval_protocol": "sadm"}, preset="modelnet10")
    assert {k: getattr(sadm, k) for k in EVAL_PROTOCOLS["sadm"]} == EVAL_PROTOCOLS["sadm"]
    mine = make_config({"eval_protocol": "sadm", "eval_models": 2, "eval_net": "dgcnn"}, preset="modelnet10")
    assert (mine.eval_models, mine.eval_epochs, mine.eval_optimizer, mine.eval_net) == (2, 500, "sgd", "dgcnn")
    settings = eval_settings(mine)
    assert (settings.protocol, settings.net, settings.tnet, settings.augment) == ("sadm", "dgcnn", True, False)
    # A resolved config written out and read back is the same config (the protocol does not re-apply).
    assert make_config(mine.model_dump()) == mine
    none = make_config({}, preset="modelnet10")
    assert none.eval_protocol is None and eval_settings(none).optimizer == "adam"


def test_protocols_are_for_3d_shapes_only():
    with pytest.raises(UserError, match="eval_protocol and eval_net choose 3D evaluators"):
        make_config({"eval_protocol": "sadm"})  # mnist
    with pytest.raises(UserError, match="config key 'eval_protocol'"):
        make_config({"eval_protocol": "dd3dx"}, preset="modelnet10")
