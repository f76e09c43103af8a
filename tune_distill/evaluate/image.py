"""The image evaluator: render synthetic clouds to binary images and train DC's ConvNet on them from scratch.

The protocol is DC's: K fresh ConvNets (width 128, depth 3, instance norm, average pooling),
SGD with lr 0.01, momentum 0.9, weight decay 5e-4, E epochs in batches of 256 with the learning
rate divided by 10 after half of them, DC's crop/scale/rotate augmentation (one of the three per
image) on the *training* images only, and the test accuracy on binarised test digits.

The K models train one after another (``train_one``, ``torch.optim.SGD``), or with
``EvalSettings.batched`` as one vmapped computation (``train_batched``, a functional SGD), meant
for GPUs, where K small steps become one larger one. Each model keeps its own random streams, so
both give the same models up to float rounding. On a CPU batched is slower (its convolutions
are grouped ones; benchmarks/bench_eval.py).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..core.seeding import seeded
from ..core.types import Clouds, PointBatch
from ..data.image import dc_augment, render
from ..nets.convnet import ConvNet
from .pictures import draw_grid
from .settings import EvalSettings, Progress, each_model

MOMENTUM, WEIGHT_DECAY = 0.9, 5e-4  # DC's SGD
EVAL_BATCH = 2000  # test images per forward pass (one model)


def _fresh_net(train_x: torch.Tensor, num_classes: int, settings: EvalSettings, seed: int) -> ConvNet:
    """Model ``seed``'s untrained ConvNet: its init draws from the global stream seeded ``seed``,
    forked so the caller's stream is left as it was."""
    net = seeded(seed, lambda: ConvNet(train_x.shape[1], num_classes, train_x.shape[-1], settings.width, settings.depth))
    return net.to(train_x.device)


Step = Callable[[torch.Tensor, torch.Tensor, float], None]  # (images (K, b, C, H, W), labels (K, b), lr)


def _train(train_x: torch.Tensor, train_y: torch.Tensor, generators: Sequence[torch.Generator],
           settings: EvalSettings, step: Step) -> None:
    """The protocol's schedule and data stream for K models at once, shared by both paths.

    Model k's generator gives its per-epoch permutation and then, batch by batch, its augmentation
    draws, in the order one model alone consumes them: K models batched see exactly the batches
    they would see one by one. ``step`` trains all K on their (stacked) batches.
    """
    n = train_x.shape[0]
    for epoch in range(settings.epochs):
        lr = settings.lr * (0.1 if epoch >= settings.epochs // 2 else 1.0)
        orders = [torch.randperm(n, generator=g).to(train_x.device) for g in generators]
        for start in range(0, n, settings.batch):
            idx = [order[start : start + settings.batch] for order in orders]
            xs = [train_x[i] for i in idx]
            if settings.augment:
                # One call per model: each draws from its own generator, and DC's fill value is
                # the mean of that model's batch.
                xs = [dc_augment(x, g) for x, g in zip(xs, generators)]
            step(torch.stack(xs), torch.stack([train_y[i] for i in idx]), lr)


def _accuracies(predict: Callable[[torch.Tensor], torch.Tensor], models: int, images: torch.Tensor,
                labels: torch.Tensor, batch: int) -> list[float]:
    """Top-1 accuracy of each of ``models`` models, without gradients; ``predict`` maps images
    (b, ...) to predicted labels (models, b)."""
    correct = torch.zeros(models, dtype=torch.long, device=labels.device)
    with torch.no_grad():
        for x, y in zip(images.split(batch), labels.split(batch)):
            correct += (predict(x) == y).sum(1)
    return [c / max(1, len(labels)) for c in correct.tolist()]


def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of ``net`` on a stack of inputs (images, or padded point clouds), in eval
    mode, in batches, without gradients."""
    net.eval()
    acc = _accuracies(lambda x: net(x).argmax(1)[None], 1, images, labels, batch)[0]
    net.train()
    return acc


def train_one(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: EvalSettings,
              seed: int) -> ConvNet:
    """One fresh ConvNet trained on (train_x, train_y) with ``torch.optim.SGD``, random streams seeded ``seed``."""
    net = _fresh_net(train_x, num_classes, settings, seed)
    opt = torch.optim.SGD(net.parameters(), lr=settings.lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(net(x[0]), y[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _train(train_x, train_y, [torch.Generator().manual_seed(seed)], settings, step)
    return net


def train_and_test(train_x: torch.Tensor, train_y: torch.Tensor, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                   num_classes: int, settings: EvalSettings, seed: int) -> dict[str, float]:
    """Train one fresh ConvNet on (train_x, train_y); its accuracy on each named evaluation set."""
    net = train_one(train_x, train_y, num_classes, settings, seed)
    return {name: accuracy(net, x, y) for name, (x, y) in eval_sets.items()}


def _sgd(params: list[torch.Tensor], grads: Sequence[torch.Tensor], buffers: list[torch.Tensor | None],
         lr: float) -> None:
    """In place, ``torch.optim.SGD(momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)``'s step op for op
    (no dampening, no Nesterov), so the batched models follow the one-by-one updates."""
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads)):
            d_p = g.add(p, alpha=WEIGHT_DECAY)
            if buffers[i] is None:
                buffers[i] = d_p.clone()  # torch starts the buffer at the first step's decayed gradient
            else:
                buffers[i].mul_(MOMENTUM).add_(d_p)
            p.add_(buffers[i], alpha=-lr)


ParamForward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]  # (one model's parameters, images) -> logits


def train_batched(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, settings: EvalSettings,
                  seeds: Sequence[int]) -> tuple[ParamForward, dict[str, torch.Tensor]]:
    """``train_one`` for every seed as one computation: the K ConvNets' parameters stacked and
    ``vmap``-ed through one forward and backward per step, with a functional SGD.

    Returns the ConvNet as a function of its parameters and the K trained parameter sets stacked
    along a leading axis. Each model keeps its own random streams (init, permutations,
    augmentation), so they are ``train_one``'s up to float rounding: a batched convolution is a
    grouped one, which sums in another order.
    """
    nets = [_fresh_net(train_x, num_classes, settings, s) for s in seeds]
    stacked, _ = stack_module_state(nets)  # ConvNet has no buffers: GroupNorm keeps no running stats
    names, params = list(stacked), list(stacked.values())
    skeleton = copy.deepcopy(nets[0]).to("meta")

    def forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(skeleton, p, (x,))

    losses = vmap(lambda p, x, y: F.cross_entropy(forward(p, x), y))
    momentum: list[torch.Tensor | None] = [None] * len(params)

    def step(x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
        # The models share no parameters, so the gradient of the summed losses is each model's own.
        grads = torch.autograd.grad(losses(dict(zip(names, params)), x, y).sum(), params)
        _sgd(params, grads, momentum, lr)

    _train(train_x, train_y, [torch.Generator().manual_seed(s) for s in seeds], settings, step)
    return forward, {n: p.detach() for n, p in zip(names, params)}


def score_batched(forward: ParamForward, params: dict[str, torch.Tensor],
                  eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[dict[str, float]]:
    """Per model of ``train_batched``'s stack, its accuracy on each named evaluation set.

    The models are scored in turn, not vmapped: a 2,000-image chunk is already a large
    computation, and vmapped the convolutions would be grouped ones (measured 1.7x slower on the
    2-core CPU, 2 models, 10,000 test digits). Instance norm has no running statistics, so the trained
    (train-mode) function is the eval-mode one.
    """
    models = len(next(iter(params.values())))
    scores = []
    for k in range(models):
        mine = {name: p[k] for name, p in params.items()}
        scores.append({name: _accuracies(lambda b: forward(mine, b).argmax(1)[None], 1, x, y, EVAL_BATCH)[0]
                       for name, (x, y) in eval_sets.items()})
    return scores


def train_and_test_batched(train_x: torch.Tensor, train_y: torch.Tensor,
                           eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                           settings: EvalSettings, seeds: Sequence[int]) -> list[dict[str, float]]:
    """``train_and_test`` for every seed, all models trained and scored at once."""
    return score_batched(*train_batched(train_x, train_y, num_classes, settings, seeds), eval_sets)


def evaluate_images(train_x: torch.Tensor, train_y: torch.Tensor, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    num_classes: int, settings: EvalSettings, seed: int,
                    progress: Progress | None = None) -> dict[str, list[float]]:
    """Per evaluation set, the accuracies of ``settings.models`` ConvNets trained from scratch
    (seeds seed, seed+1, ...); every set is scored by the same trained networks.

    ``settings.batched`` trains them all at once (``train_and_test_batched``); then ``progress``
    hears of the K models only when all are done.
    """
    if settings.batched:
        if progress is not None:
            progress(0, settings.models)
        runs = train_and_test_batched(train_x, train_y, eval_sets, num_classes, settings,
                                      [seed + k for k in range(settings.models)])
        if progress is not None:
            progress(settings.models, settings.models)
        return {name: [r[name] for r in runs] for name in eval_sets}
    return each_model(settings.models, seed,
                      lambda s: train_and_test(train_x, train_y, eval_sets, num_classes, settings, s), progress)


class ImageEvaluator:
    """The evaluator for image datasets: renders the splits once, then judges synthetic sets."""

    def __init__(self, grid_shape: tuple[int, ...], num_classes: int, splits: dict[str, Clouds],
                 settings: EvalSettings, device: torch.device):
        self.grid_shape, self.num_classes, self.settings, self.device = grid_shape, num_classes, settings, device
        self.sets = {name: (render(c.batch(torch.arange(len(c))), grid_shape).to(device), c.labels.to(device))
                     for name, c in splits.items()}

    def __call__(self, points: torch.Tensor, labels: torch.Tensor, seed: int,
                 progress: Progress | None = None) -> dict[str, list[float]]:
        images = render(PointBatch.from_padded(points.detach().cpu()), self.grid_shape).to(self.device)
        return evaluate_images(images, labels.to(self.device), self.sets, self.num_classes, self.settings, seed, progress)



def draw_images(grid_shape: tuple[int, ...], points: torch.Tensor, labels: torch.Tensor, path: Path,
                class_names: tuple[str, ...] = ()) -> None:
    """The rendered set as a PNG: one row per class, one column per cloud."""
    images = render(PointBatch.from_padded(points.cpu()), grid_shape)[:, 0].numpy()
    draw_grid(path, labels.numpy(), class_names, lambda ax, i: ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1))
