"""K classifiers of one architecture trained as one computation (``EvalSettings.batched``).

The K freshly initialised networks' parameters and buffers are stacked along a leading axis
(``torch.func.stack_module_state``) into leaf tensors that one ordinary ``torch.optim`` optimizer
steps: SGD's and Adam's updates are elementwise, so stepping the stack is stepping each model
with its own optimizer. Each training step computes the K models' losses on their own batches,
summed (the models share no parameters, so the gradient is each model's own):

- on CUDA as one ``vmap``-ed forward and backward, so each kernel launch does K models' work;
- on a CPU as the K models' forwards in turn inside the one step, because there a layer of one
  model is already a large computation and the vmapped (grouped) convolutions are slower
  (benchmarks/bench_eval.py measured it); the step, the optimizer and the data stream are still
  shared.

Both give each model the result it gets trained alone, up to float rounding.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .settings import Metric, top1


def epoch_batches(train_x: torch.Tensor, train_y: torch.Tensor, generators: Sequence[torch.Generator], batch: int,
                  augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None,
                  min_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of K models' mini-batches, stacked: (inputs (K, b, ...), labels (K, b)).

    Model k's generator gives its permutation and then, batch by batch, its augmentation draws, in
    the order one model alone consumes them, so K models trained at once see exactly the batches
    they would see one by one. Batches smaller than ``min_size`` are skipped, drawing nothing.
    """
    n = train_x.shape[0]
    orders = [torch.randperm(n, generator=g).to(train_x.device) for g in generators]
    for start in range(0, n, batch):
        idx = [order[start : start + batch] for order in orders]
        if len(idx[0]) < min_size:
            continue
        xs = [train_x[i] for i in idx]
        if augment is not None:
            xs = [augment(x, g) for x, g in zip(xs, generators)]
        yield torch.stack(xs), torch.stack([train_y[i] for i in idx])


class ModelStack:
    """``nets`` (one architecture, each already initialised) as one stack of parameters and buffers.

    ``vectorise``: vmap the K models (default: on CUDA only).
    """

    def __init__(self, nets: Sequence[nn.Module], vectorise: bool | None = None):
        params, buffers = stack_module_state(list(nets))
        self.params: dict[str, torch.Tensor] = params  # leaves with requires_grad, (K, ...)
        self.buffers: dict[str, torch.Tensor] = buffers  # e.g. BatchNorm's running statistics, (K, ...)
        self.models = len(nets)
        self.skeleton = copy.deepcopy(nets[0]).to("meta")
        self.vectorised = next(iter(params.values())).device.type == "cuda" if vectorise is None else vectorise

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.skeleton, (params, buffers), (x,))

    def model(self, k: int) -> dict[str, torch.Tensor]:
        """Model ``k``'s parameters and buffers (views into the stack)."""
        params, buffers = self._split(k)
        return {**params, **buffers}

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum over models of model k's mean cross-entropy on its batch ``x[k]``, ``y[k]``, in
        train mode (BatchNorm updates model k's running statistics from its own batch)."""
        self.skeleton.train()
        if self.vectorised:
            def one(p, b, xk, yk):
                return F.cross_entropy(self._one(p, b, xk), yk)
            return vmap(one, randomness="different")(self.params, self.buffers, x, y).sum()
        return sum(F.cross_entropy(self._one(*self._split(k), x[k]), y[k]) for k in range(self.models))

    def _split(self, k: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        return ({n: p[k] for n, p in self.params.items()}, {n: b[k] for n, b in self.buffers.items()})

    def accuracies(self, inputs: torch.Tensor, labels: torch.Tensor, batch: int,
                   metric: Metric = "accuracy") -> list[float]:
        """Each model's ``top1`` on (inputs, labels), in eval mode, without gradients.

        The models are scored in turn: a chunk of ``batch`` test inputs is already a large
        computation for one model.
        """
        self.skeleton.eval()
        accs = []
        for k in range(self.models):
            params, buffers = self._split(k)
            accs.append(top1(lambda x: self._one(params, buffers, x), inputs, labels, batch, metric))
        self.skeleton.train()
        return accs

    def scores(self, eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int,
               metric: Metric = "accuracy") -> list[dict[str, float]]:
        """Per model, its score (``top1``'s ``metric``) on each named evaluation set."""
        per_set = {name: self.accuracies(x, y, batch, metric) for name, (x, y) in eval_sets.items()}
        return [{name: accs[k] for name, accs in per_set.items()} for k in range(self.models)]
